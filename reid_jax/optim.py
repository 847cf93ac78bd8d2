"""The paper's optimiser: Adam with PyTorch-style weight decay and the paper's schedule.

PyTorch's `Adam(weight_decay=wd)` adds `wd * param` to the gradient before the moment estimates
(coupled L2, not AdamW's decoupled decay). The re-id results this project reproduces were trained
that way, so the chain below does the same: add_decayed_weights -> scale_by_adam -> learning rate
(`reid_jax.schedule`). The `config.optim` fields are defined in `reid_jax.config`.
"""

import jax
import ml_collections
import optax

from reid_jax.schedule import LearningRateSchedule


def _is_matrix_or_kernel(params):
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
  config_optim: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
  """Adam with coupled L2 weight decay and the paper's schedule, from `config.optim`.

  Equivalent to `torch.optim.Adam(params, lr, betas=(b1, b2), eps=eps,
  weight_decay=weight_decay)` with `LearningRateSchedule`. Optional global-norm clipping
  (`grad_clip_norm > 0`) acts on the raw gradients, before the decay term is added.
  """
  transforms = []
  if config_optim.grad_clip_norm > 0:
    transforms.append(optax.clip_by_global_norm(config_optim.grad_clip_norm))
  if config_optim.weight_decay > 0:
    mask = None if config_optim.decay_norm_and_bias else _is_matrix_or_kernel
    transforms.append(optax.add_decayed_weights(config_optim.weight_decay, mask=mask))
  transforms += [
    optax.scale_by_adam(b1=config_optim.b1, b2=config_optim.b2, eps=config_optim.eps),
    optax.scale_by_learning_rate(LearningRateSchedule.from_config(config_optim, steps_per_epoch)),
  ]
  return optax.chain(*transforms)
