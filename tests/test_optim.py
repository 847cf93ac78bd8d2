"""The schedule against its formula, and the optimiser against torch.optim.Adam step by step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from reid_jax import config as config_lib
from reid_jax import optim
from reid_jax.schedule import LearningRateSchedule


def test_schedule_values_at_paper_epochs():
  base_lr, steps_per_epoch = 3e-4, 7
  schedule = LearningRateSchedule(base_lr, steps_per_epoch)
  expected_by_epoch = {
    0: base_lr,
    149: base_lr,
    150: base_lr,
    225: base_lr * 0.001**0.5,
    300: base_lr * 0.001,
    400: base_lr * 0.001,
  }
  for epoch, expected in expected_by_epoch.items():
    for step in (epoch * steps_per_epoch, epoch * steps_per_epoch + steps_per_epoch - 1):
      np.testing.assert_allclose(schedule(step), expected, rtol=1e-6, err_msg=f"{step=}")
  # Per-epoch steps: the last step of epoch 150 still has epoch 150's rate.
  np.testing.assert_allclose(
    schedule(151 * steps_per_epoch - 1), base_lr * 0.001 ** (0 / 150), rtol=1e-6
  )
  np.testing.assert_allclose(
    schedule(151 * steps_per_epoch), base_lr * 0.001 ** (1 / 150), rtol=1e-6
  )


def test_schedule_rejects_bad_arguments():
  with pytest.raises(ValueError, match="steps_per_epoch"):
    LearningRateSchedule(1e-3, 0)
  with pytest.raises(ValueError, match="decay_start_epoch"):
    LearningRateSchedule(1e-3, 10, decay_start_epoch=300, total_epochs=300)
  with pytest.raises(ValueError, match="final_factor: must lie in"):
    LearningRateSchedule(1e-3, 10, final_factor=0.0)


def _config(**overrides):
  config = config_lib.default_config().optim
  config.update(overrides)
  return config


@pytest.mark.parametrize("grad_clip_norm", [0.0, 1.0])
def test_make_optimizer_matches_torch_adam(grad_clip_norm):
  """Eight steps over two epochs of decay, with the torch scheduler stepped once per epoch."""
  steps_per_epoch, decay_start, total = 2, 1, 3
  config = _config(
    base_lr=1e-2,
    decay_start_epoch=decay_start,
    total_epochs=total,
    final_factor=0.01,
    grad_clip_norm=grad_clip_norm,
  )
  rng = np.random.default_rng(0)
  params = {
    "kernel": rng.normal(size=(4, 3)).astype(np.float32),
    "bias": rng.normal(size=(3,)).astype(np.float32),
  }
  grads_per_step = [
    {k: (rng.normal(size=v.shape) * 2).astype(np.float32) for k, v in params.items()}
    for _ in range(8)
  ]

  tx = optim.make_optimizer(config, steps_per_epoch)
  jax_params = jax.tree.map(jnp.asarray, params)
  opt_state = tx.init(jax_params)
  update = jax.jit(tx.update)
  for grads in grads_per_step:
    updates, opt_state = update(jax.tree.map(jnp.asarray, grads), opt_state, jax_params)
    jax_params = optax.apply_updates(jax_params, updates)

  torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in params.items()}
  torch_opt = torch.optim.Adam(
    list(torch_params.values()), lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=5e-4
  )
  lr_lambda = lambda epoch: 0.01 ** (max(epoch - decay_start, 0) / (total - decay_start))
  torch_schedule = torch.optim.lr_scheduler.LambdaLR(torch_opt, lr_lambda)
  for step, grads in enumerate(grads_per_step):
    for name, param in torch_params.items():
      param.grad = torch.tensor(grads[name])
    if grad_clip_norm:
      torch.nn.utils.clip_grad_norm_(list(torch_params.values()), grad_clip_norm)
    torch_opt.step()
    if (step + 1) % steps_per_epoch == 0:
      torch_schedule.step()

  for name, param in torch_params.items():
    np.testing.assert_allclose(
      jax_params[name], param.detach().numpy(), rtol=1e-6, atol=1e-6, err_msg=name
    )


@pytest.mark.parametrize("decay_norm_and_bias", [True, False])
def test_weight_decay_mask_with_nnx_optimizer(decay_norm_and_bias):
  model = nnx.Linear(3, 2, bias_init=nnx.initializers.ones, rngs=nnx.Rngs(0))
  kernel_before = np.array(model.kernel[...])
  config = _config(weight_decay=0.5, decay_norm_and_bias=decay_norm_and_bias)
  optimizer = nnx.Optimizer(model, optim.make_optimizer(config, 1), wrt=nnx.Param)
  zero_grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
  optimizer.update(model, zero_grads)
  # With zero gradients only the decay term moves a parameter.
  assert not np.allclose(model.kernel[...], kernel_before)
  assert np.allclose(model.bias[...], 1.0) != decay_norm_and_bias
