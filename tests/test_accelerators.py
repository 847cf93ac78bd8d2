"""The accelerator settings lower for GPUs and TPUs on this CPU, so a first accelerator run does
not fail while tracing or lowering: the paper's train step with `model.dtype=bfloat16`,
`remat` and XLA's attention for cuda and tpu; cuDNN's fused attention where its limits allow,
with JAX's GPU probes stood in for (they need a GPU)."""

import os
import re

import jax
import jax.numpy as jnp
import pytest

from reid_jax import config as config_lib
from reid_jax import sharding, train
from reid_jax import state as state_lib
from reid_jax.errors import FieldError
from reid_jax.models import resnet3d

from tiny_training import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _paper_config(**model):
  config = load_config(os.path.join(REPO, "configs", "mars.py"))
  config.init.kinetics_i3d = config.init.torchvision_resnet50 = config.init.checkpoint = ""
  config.model.update(model)
  return config


def _lower_train_step(config, platforms, batch=8):
  """The StableHLO of the real train step (model, losses, Adam) on abstract state and clips,
  lowered for `platforms`."""
  mesh = sharding.make_mesh()
  graphdef, state = state_lib.abstract_state(config, num_classes=625, steps_per_epoch=10, mesh=mesh)
  setup = state_lib.TrainSetup(mesh, graphdef, "kinetics", 625, 10)
  d = config.data
  clips = (batch, d.num_frames, d.height, d.width, 3)
  inputs = {
    "clips": jax.ShapeDtypeStruct(clips, jnp.uint8, sharding=setup.batch_sharding),
    "labels": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=setup.batch_sharding),
  }
  step = train.make_train_step(setup, config)
  return step.trace(state, inputs).lower(lowering_platforms=tuple(platforms)).as_text()


def test_the_paper_train_step_lowers_for_cuda_and_tpu_with_the_accelerator_settings():
  config = _paper_config(dtype="bfloat16", remat=True, attention_impl="xla")
  config_lib.validate(config, num_devices=jax.device_count())
  text = _lower_train_step(config, ["cuda", "tpu"])
  # The convolutions and matmuls compute in bfloat16 (parameters stay float32); remat's
  # recomputation is fenced by optimisation barriers.
  assert len(re.findall(r"stablehlo\.convolution.*xbf16>", text)) >= 50
  assert len(re.findall(r"stablehlo\.dot_general.*xbf16>", text)) >= 100
  assert "stablehlo.optimization_barrier" in text
  assert "CustomSPMDPartitioning" not in text


def test_cudnn_attention_is_refused_where_cudnn_cannot_run_it():
  # The paper's res4 non-local blocks attend over 1024 / 2 = 512 channels.
  assert resnet3d.architecture("resnet3d50_nl", dtype="bfloat16").nonlocal_widths() == {
    1: 256,
    2: 512,
  }
  with pytest.raises(FieldError, match="the non-local blocks of res4 have 512: use xla"):
    resnet3d.architecture("resnet3d50_nl", dtype="bfloat16", attention_impl="cudnn")
  with pytest.raises(FieldError, match="needs dtype bfloat16 or float16, got float32"):
    resnet3d.architecture("resnet3d50_nl", width=32, attention_impl="cudnn")
  config = _paper_config(dtype="bfloat16", attention_impl="cudnn")
  with pytest.raises(config_lib.ConfigError, match="config.model.attention_impl: cudnn attention"):
    config_lib.validate(config, num_devices=jax.device_count())


def test_cudnn_attention_lowers_for_cuda_where_it_fits(monkeypatch):
  """The train step of a network of half the paper's width (head dimensions 128 and 256), with
  cuDNN 9.10 on a Hopper GPU stood in for JAX's probes."""
  from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention

  monkeypatch.setattr(cudnn_attention, "check_cudnn_version", lambda: 91000)
  monkeypatch.setattr(cudnn_attention, "check_compute_capability", lambda c: float(c) <= 9.0)
  monkeypatch.setattr(cudnn_attention, "is_cuda_compute_capability_equal", lambda c: False)
  config = _paper_config(
    width=32, stage_depths=(1, 2, 2, 1), dtype="bfloat16", remat=True, attention_impl="cudnn"
  )
  config.data.update(num_frames=4, height=128, width=64)
  config_lib.validate(config, num_devices=jax.device_count())
  # JAX lowers the fused attention as a custom partitioning (the cuDNN call itself is made when
  # XLA partitions the program for the GPU): one for each non-local block's forward, its remat
  # recomputation and its backward.
  text = _lower_train_step(config, ["cuda"])
  assert len(re.findall(r"custom_call @CustomSPMDPartitioning", text)) == 6


def test_a_cudnn_model_is_exported_with_xla_attention():
  config = _paper_config(width=32, dtype="bfloat16", attention_impl="cudnn")
  config.mode = "export"
  with pytest.raises(config_lib.ConfigError, match="export with --config.model.attention_impl=xla"):
    config_lib.validate(config, num_devices=jax.device_count())
  config.model.attention_impl = "xla"
  config_lib.validate(config, num_devices=jax.device_count())
