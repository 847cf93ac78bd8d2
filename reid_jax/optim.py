"""Optimiser and learning-rate schedule of the paper: Adam with PyTorch-style weight decay.

PyTorch's `Adam(weight_decay=wd)` adds `wd * param` to the gradient before the moment estimates
(coupled L2, not AdamW's decoupled decay). The re-id results this project reproduces were trained
that way, so the chain below does the same: add_decayed_weights -> scale_by_adam -> learning rate.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax


def default_config() -> ml_collections.ConfigDict:
  """The `config.optim` fields `make_optimizer` reads, with the paper's values."""
  return ml_collections.ConfigDict(
    dict(
      base_lr=3e-4,
      weight_decay=5e-4,
      # False leaves 1-D parameters (BatchNorm scales, biases) undecayed; PyTorch's Adam
      # decays every parameter, hence True.
      decay_norm_and_bias=True,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      decay_start_epoch=150,
      total_epochs=300,
      final_factor=0.001,
      # Global-norm gradient clipping threshold; 0 disables it.
      grad_clip_norm=0.0,
    )
  )


def learning_rate_schedule(
  base_lr: float,
  steps_per_epoch: int,
  *,
  decay_start_epoch: int = 150,
  total_epochs: int = 300,
  final_factor: float = 0.001,
) -> optax.Schedule:
  """Constant, then exponential decay to `base_lr * final_factor` at `total_epochs`.

  `lr(epoch) = base_lr` for `epoch < decay_start_epoch`, else
  `base_lr * final_factor ** ((epoch - decay_start_epoch) / (total_epochs - decay_start_epoch))`,
  with `epoch = step // steps_per_epoch`: the rate changes once per epoch, as PyTorch's
  per-epoch `LambdaLR` does in the reference codebases. Past `total_epochs` it stays at
  `base_lr * final_factor`.
  """
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
  if not 0 <= decay_start_epoch < total_epochs:
    raise ValueError(
      f"Need 0 <= decay_start_epoch < total_epochs, got {decay_start_epoch} and {total_epochs}."
    )
  decay_epochs = total_epochs - decay_start_epoch

  def schedule(step):
    epoch = step // steps_per_epoch
    progress = jnp.clip((epoch - decay_start_epoch) / decay_epochs, 0.0, 1.0)
    return base_lr * final_factor**progress

  return schedule


def schedule_from_config(
  config_optim: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """`learning_rate_schedule` from the `config.optim` fields (also handy for logging the lr)."""
  return learning_rate_schedule(
    config_optim.base_lr,
    steps_per_epoch,
    decay_start_epoch=config_optim.decay_start_epoch,
    total_epochs=config_optim.total_epochs,
    final_factor=config_optim.final_factor,
  )


def _is_matrix_or_kernel(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
  config_optim: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
  """Adam with coupled L2 weight decay and the paper's schedule, from `config.optim`.

  Equivalent to `torch.optim.Adam(params, lr, betas=(b1, b2), eps=eps,
  weight_decay=weight_decay)` with the schedule of `learning_rate_schedule`. Optional
  global-norm clipping (`grad_clip_norm > 0`) acts on the raw gradients, before the decay term
  is added. The fields are those of `default_config()`.
  """
  transforms = []
  if config_optim.grad_clip_norm > 0:
    transforms.append(optax.clip_by_global_norm(config_optim.grad_clip_norm))
  if config_optim.weight_decay > 0:
    mask = None if config_optim.decay_norm_and_bias else _is_matrix_or_kernel
    transforms.append(optax.add_decayed_weights(config_optim.weight_decay, mask=mask))
  transforms += [
    optax.scale_by_adam(b1=config_optim.b1, b2=config_optim.b2, eps=config_optim.eps),
    optax.scale_by_learning_rate(schedule_from_config(config_optim, steps_per_epoch)),
  ]
  return optax.chain(*transforms)
