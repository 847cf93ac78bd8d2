"""A config's model with random weights, for the benchmarks that time a trained model's work
(its speed does not depend on the weights)."""

import importlib.util


def build(config_path: str):
  """`(config, setup)`: the config at `config_path` without initial weights, and its state on
  all devices (`reid_jax.state.build_state`, 100 classes)."""
  from reid_jax import state as state_lib

  spec = importlib.util.spec_from_file_location("bench_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.init.kinetics_i3d = config.init.torchvision_resnet50 = config.init.checkpoint = ""
  setup = state_lib.build_state(
    config, num_classes=100, steps_per_epoch=1, mesh=state_lib.make_mesh()
  )
  return config, setup
