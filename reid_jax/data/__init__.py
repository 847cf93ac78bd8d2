"""Input data: the P x K training pipeline, the built evaluation set, and frame decoding.

Datasets are built once by `python -m data_prep.build`; see `pipeline` for the tf.data training
pipeline, `sampling` for what it reads and why, `tracklets` for the on-disk index and the
evaluation set as a chunk-stream source, `frames` for the one image decoder and resize.

The training pipeline and sampler are loaded on first use (PEP 562 `__getattr__`): importing
TensorFlow takes seconds, and code that only needs `normalize_clips` or the evaluation set should
not pay for it.
"""

import importlib

from reid_jax.data.normalize import NORMALIZATIONS, normalize_clips
from reid_jax.data.tracklets import BuiltTracklets, TrackletTable

_LAZY = {
  "make_train_iterator": "reid_jax.data.pipeline",
  "train_info": "reid_jax.data.pipeline",
  "steps_per_epoch": "reid_jax.data.sampling",
}

__all__ = [
  "NORMALIZATIONS",
  "BuiltTracklets",
  "TrackletTable",
  "normalize_clips",
  *_LAZY,
]


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
