"""A config's model with random weights, for the benchmarks that time a trained model's work
(its speed does not depend on the weights)."""

import importlib.util

NUM_CLASSES = 100


def load(config_path: str):
  """The config at `config_path`, without initial weights."""
  spec = importlib.util.spec_from_file_location("bench_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.init.kinetics_i3d = config.init.torchvision_resnet50 = config.init.checkpoint = ""
  return config


def train_state(config_path: str):
  """`(config, setup, state)`: the config's training state (Adam included) on all devices."""
  from reid_jax import sharding
  from reid_jax import state as state_lib

  config = load(config_path)
  setup, state = state_lib.build_state(
    config, num_classes=NUM_CLASSES, steps_per_epoch=1, mesh=sharding.make_mesh()
  )
  return config, setup, state


def build(config_path: str):
  """`(config, model)`: the config's network with random weights as an `InferenceModel` on all
  devices, as `reid_jax.inference.model.restore` gives a trained one."""
  from reid_jax import state as state_lib
  from reid_jax.inference.model import InferenceModel

  config, setup, state = train_state(config_path)
  graphdef, weights = state_lib.model_part(setup, state)
  return config, InferenceModel(graphdef, weights, setup.normalization, 0, {}, setup.mesh)
