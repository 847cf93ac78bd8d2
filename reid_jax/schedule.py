"""The paper's learning-rate schedule: constant, then exponential decay, changing once an epoch.

`lr(epoch) = base_lr` for `epoch < decay_start_epoch`, else
`base_lr * final_factor ** ((epoch - decay_start_epoch) / (total_epochs - decay_start_epoch))`,
with `epoch = step // steps_per_epoch`, as PyTorch's per-epoch `LambdaLR` does in the reference
codebases. Past `total_epochs` it stays at `base_lr * final_factor`.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from data_prep.errors import FieldError


@dataclasses.dataclass(frozen=True)
class LearningRateSchedule:
  """`schedule(step) -> learning rate`; impossible values are refused when it is made
  (`FieldError` naming the field)."""

  base_lr: float
  steps_per_epoch: int = 1
  decay_start_epoch: int = 150
  total_epochs: int = 300
  final_factor: float = 0.001

  def __post_init__(self):
    if not self.base_lr > 0:
      raise FieldError("base_lr", f"must be positive, got {self.base_lr}")
    if self.steps_per_epoch < 1:
      raise FieldError("steps_per_epoch", f"must be >= 1, got {self.steps_per_epoch}")
    if not 0 <= self.decay_start_epoch < self.total_epochs:
      raise FieldError(
        "decay_start_epoch",
        f"need 0 <= decay_start_epoch ({self.decay_start_epoch}) < total_epochs "
        f"({self.total_epochs})",
      )
    if not 0 < self.final_factor <= 1:
      raise FieldError("final_factor", f"must lie in (0, 1], got {self.final_factor}")

  @classmethod
  def from_config(cls, config_optim, steps_per_epoch: int = 1) -> LearningRateSchedule:
    """The schedule of the `config.optim` fields."""
    return cls(
      base_lr=config_optim.base_lr,
      steps_per_epoch=steps_per_epoch,
      decay_start_epoch=config_optim.decay_start_epoch,
      total_epochs=config_optim.total_epochs,
      final_factor=config_optim.final_factor,
    )

  def __call__(self, step):
    epoch = step // self.steps_per_epoch
    decay_epochs = self.total_epochs - self.decay_start_epoch
    progress = jnp.clip((epoch - self.decay_start_epoch) / decay_epochs, 0.0, 1.0)
    return self.base_lr * self.final_factor**progress
