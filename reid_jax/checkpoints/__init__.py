"""Checkpoints of the training state with Orbax, in three parts.

    <workdir>/checkpoints/<step>/state     the state: an nnx.State of (model, optimizer), so
                                           `state/0` is the model (parameters, BatchNorm
                                           statistics, its RNG) and `state/1` the optimiser
    <workdir>/checkpoints/<step>/meta      a small JSON dict: step, epoch, model, normalisation,
                                           dataset, number of classes, the run's config
    <workdir>/checkpoints/checksums/<step>.json   each file's size and SHA-256

- `writer`: `CheckpointWriter`, periodic, preemption and final saves of a training run;
- `reader`: `CheckpointReader`, the steps, their metadata and damage, and restores: the whole
  training state (resuming), or only its model part (inference, fine-tuning);
- `checksums`: recording and checking the checksums, and setting a damaged step aside.

The writer is loaded on first use (PEP 562 `__getattr__`): inference only reads.
"""

from reid_jax.checkpoints.reader import (
  CheckpointDamaged,
  CheckpointMismatch,
  CheckpointReader,
  MissingCheckpoint,
  latest_meta,
)

__all__ = [
  "CheckpointDamaged",
  "CheckpointMismatch",
  "CheckpointReader",
  "CheckpointWriter",
  "MissingCheckpoint",
  "latest_meta",
]


def __getattr__(name):
  if name == "CheckpointWriter":
    from reid_jax.checkpoints.writer import CheckpointWriter

    return CheckpointWriter
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
