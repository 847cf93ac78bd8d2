"""The registry of datasets: one module each, found by name.

A dataset is one module of this package defining `DATASET` (a `data_prep.dataset.Dataset`): its
layout reader, download instructions, TFDS splits, train and eval views, person splits and
evaluation protocols. Adding one is writing that module and adding its name to NAMES; the
converter, the input pipeline, `config.validate` and the evaluation read everything from here.
"""

from __future__ import annotations

import functools
import importlib

from data_prep.dataset import Dataset, Protocol

NAMES = ("mars", "ilidsvid", "prid2011", "duke", "lsvid")


@functools.cache
def get(name: str) -> Dataset:
  """The dataset called `name`."""
  if name not in NAMES:
    raise ValueError(f"{name!r} is not a dataset; choose one of {NAMES}")
  dataset = importlib.import_module(f"{__name__}.{name}").DATASET
  if dataset.name != name:
    raise ValueError(f"{__name__}.{name} declares the dataset {dataset.name!r}")
  return dataset


def protocol_names() -> tuple[str, ...]:
  """Every dataset's protocols' names."""
  return tuple(p.name for name in NAMES for p in get(name).protocols)


def protocol(name: str) -> Protocol:
  """The protocol called `name`, whichever dataset declares it."""
  for dataset in NAMES:
    for p in get(dataset).protocols:
      if p.name == name:
        return p
  raise ValueError(f"unknown protocol {name!r}; choose one of {protocol_names()}")
