"""Makes the dataset a run needs if it is not built yet: the synthetic one is generated first,
then the real converter (`data_prep.build`) builds it. Only process 0 does; the others wait."""

from __future__ import annotations

import glob
import logging
import os
import shutil

import jax

from data_prep import built
from data_prep.files import atomic_directory
from reid_jax import config as config_lib

log = logging.getLogger("reid_jax")


def prepare_dataset(config, workdir: str) -> str:
  """Returns the data_dir holding the built dataset, building it first if needed.

  Only process 0 generates and converts; the others wait at a barrier, then read the result.
  """
  name = config.dataset.name
  data_dir = config_lib.data_dir(config, workdir)
  if jax.process_index() == 0 and not built.is_built(data_dir, name):
    manual_dir = config.dataset.manual_dir
    synthetic = config.dataset.synthetic.to_dict()
    if synthetic.get("identities", 0):
      manual_dir = manual_dir or os.path.join(workdir, "data", "synthetic_download")
      if not os.path.exists(manual_dir):
        _generate_synthetic(manual_dir, synthetic)
    if not manual_dir:
      raise built.DatasetNotBuilt(
        f"No built dataset at {built.dataset_dir(data_dir, name)} and config.dataset.manual_dir is not "
        f"set: build it with `python -m data_prep.build --dataset={name} "
        f"--manual_dir=<download> --data_dir={data_dir}` or set --config.dataset.manual_dir"
      )
    import tensorflow_datasets as tfds

    from data_prep import build  # deferred: only the building process needs the converters

    tfds.disable_progress_bar()
    build.build(name, manual_dir, data_dir)
  _barrier("dataset")
  return data_dir


def _generate_synthetic(manual_dir: str, settings: dict) -> None:
  from data_prep import synthetic

  # One run per workdir (its lock): a temporary left beside the folder is an interrupted one's.
  folder, name = os.path.split(os.path.abspath(manual_dir))
  for debris in glob.glob(os.path.join(folder, f".{name}.tmp-*")):
    shutil.rmtree(debris)
  log.info("Generating the synthetic MARS-layout dataset in %s", manual_dir)
  with atomic_directory(manual_dir) as partial:
    synthetic.generate(partial, **settings)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
