"""Makes the dataset a run needs if it is not built yet: the synthetic one is generated first,
then the real converter (`data_prep.build`) builds it. Only process 0 does; the others wait."""

from __future__ import annotations

import logging
import os

import jax

from data_prep import built

log = logging.getLogger("reid_jax")


def prepare_dataset(config, workdir: str) -> str:
  """Returns the data_dir holding the built dataset, building it first if needed.

  Only process 0 generates and converts; the others wait at a barrier, then read the result.
  """
  name = config.dataset.name
  data_dir = config.dataset.data_dir or os.path.join(workdir, "data")
  if jax.process_index() == 0 and not built.is_built(data_dir, name):
    manual_dir = config.dataset.manual_dir
    synthetic = config.dataset.synthetic.to_dict()
    if synthetic.get("identities", 0):
      manual_dir = manual_dir or os.path.join(workdir, "data", "synthetic_download")
      if not os.path.exists(manual_dir):
        _generate_synthetic(manual_dir, synthetic)
    if not manual_dir:
      raise FileNotFoundError(
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

  partial = manual_dir.rstrip("/") + ".partial"
  if os.path.exists(partial):
    import shutil

    shutil.rmtree(partial)  # an interrupted earlier generation
  log.info("Generating the synthetic MARS-layout dataset in %s", manual_dir)
  synthetic.generate(partial, **settings)
  os.replace(partial, manual_dir)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
