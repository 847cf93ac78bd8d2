"""Input pipelines: P x K training clips and chunked evaluation over built datasets.

Datasets are built once by `python -m data_prep.build`; see `pipeline` for the tf.data
pipelines, `sampling` for what they read and why, `tracklets` for the on-disk index.

The pipelines are loaded on first use (PEP 562 `__getattr__`): importing TensorFlow takes
seconds, and code that only needs `normalize_clips` or `TrackletTable` should not pay for it.
"""

from reid_jax.data.normalize import NORMALIZATIONS, normalize_clips
from reid_jax.data.sampling import steps_per_epoch
from reid_jax.data.tracklets import TrackletTable

_PIPELINE_EXPORTS = ("make_train_iterator", "make_eval_iterator", "train_info")

__all__ = [
  "NORMALIZATIONS",
  "TrackletTable",
  "normalize_clips",
  "steps_per_epoch",
  *_PIPELINE_EXPORTS,
]


def __getattr__(name):
  if name in _PIPELINE_EXPORTS:
    from reid_jax.data import pipeline

    return getattr(pipeline, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
