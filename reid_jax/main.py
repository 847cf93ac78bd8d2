r"""Trains, evaluates, and runs trained models on datasets and footage.

    python -m reid_jax.main --config=configs/mars.py --workdir=/tmp/mars [--config.field=value]

Without `--config` the synthetic demo (`configs/synthetic.py`) runs. `--config.mode` picks one
of the modes (`reid_jax.modes`):

{modes}

Multi-process runs start through `launch.sh`, which passes `--coordinator_address`,
`--num_processes` and `--process_id` (or `--distributed` where JAX finds them itself: SLURM,
Cloud TPU). An error the user can act on (`reid_jax.errors.UserError`) is one line,
`error: ...`, and exit status 1; a preempted training run exits with status 75.
"""

import logging as std_logging
import os
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

from reid_jax import modes

__doc__ = __doc__.format(modes=modes.describe(indent="    "))


def _default_config() -> str:
  """configs/synthetic.py: beside the package in a source checkout, inside it once installed
  (pyproject.toml installs configs/ as reid_jax/configs)."""
  package = os.path.dirname(os.path.abspath(__file__))
  checkout = os.path.join(os.path.dirname(package), "configs", "synthetic.py")
  return checkout if os.path.exists(checkout) else os.path.join(package, "configs", "synthetic.py")


_DEFAULT_CONFIG = _default_config()


def check_config_overrides(argv: list[str]) -> None:
  """Raises SystemExit with one line for a `--config.<field>` override of a field the config
  does not have (naming the nearest ones) or given twice (ml_collections would join tuples)."""
  import difflib
  import importlib.util

  path, overrides = _DEFAULT_CONFIG, []
  for arg in argv[1:]:
    name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
    if name == "config" and "=" in arg:
      path = arg.split("=", 1)[1].split(":", 1)[0]
    elif name.startswith("config."):
      overrides.append(name[len("config.") :])
  twice = sorted({name for name in overrides if overrides.count(name) > 1})
  if twice:
    raise SystemExit(f"error: --config.{twice[0]} is given more than once")
  if not overrides or not os.path.isfile(path):
    return  # config_flags names a missing config file itself
  spec = importlib.util.spec_from_file_location("config_for_flags", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for name in overrides:
    node, parts = config, name.split(".")
    for depth, part in enumerate(parts):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part not in keys:
        prefix = ".".join(parts[:depth])
        near = difflib.get_close_matches(part, keys, n=3, cutoff=0.5)
        where = f"config.{prefix}" if prefix else "the config"
        stem = f"--config.{prefix}." if prefix else "--config."
        hint = f"; did you mean {', '.join(stem + k for k in near)}?" if near else ""
        raise SystemExit(f"error: --config.{name}: {where} has no field {part!r}{hint}")
      node = node[part]


# Before the config flag is defined: defining it parses the default config with the overrides.
if __name__ == "__main__":
  check_config_overrides(sys.argv)
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Configuration file.", lock_config=True)
flags.DEFINE_string("workdir", "workdirs/demo", "Checkpoints, logs, metrics and pictures.")
flags.DEFINE_bool(
  "distributed", False, "Call jax.distributed.initialize() with no arguments (SLURM, Cloud TPU)."
)
flags.DEFINE_string(
  "coordinator_address",
  None,
  "host:port of process 0, for explicit "
  "multi-process runs (e.g. 127.0.0.1:12345 for local processes).",
)
flags.DEFINE_integer("num_processes", None, "Processes of an explicit multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in an explicit run.")
flags.DEFINE_integer("cpu_devices", None, "Number of CPU devices to expose (testing).")


def _import_tensorflow_quietly() -> None:
  """Imports TensorFlow (the input pipeline's) with the process's stderr captured.

  Its C++ logs INFO lines while it loads (the oneDNN notice, CPU features, absl's "before
  InitializeLog" warning) before its log level applies, so TF_CPP_MIN_LOG_LEVEL cannot stop
  them. The capture is shown if the import fails; later warnings print as usual.
  """
  sys.stderr.flush()
  with tempfile.TemporaryFile() as capture:
    saved = os.dup(2)
    os.dup2(capture.fileno(), 2)
    try:
      import tensorflow  # noqa: F401
    except BaseException:
      os.dup2(saved, 2)
      capture.seek(0)
      sys.stderr.write(capture.read().decode(errors="replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax  # after flag parsing so the device flags apply before backends start

  from reid_jax import host_runtime

  host_runtime.configure_before_backends()
  if flags.FLAGS.cpu_devices:
    jax.config.update("jax_num_cpu_devices", flags.FLAGS.cpu_devices)
  if flags.FLAGS.cpu_devices or os.environ.get("JAX_PLATFORMS") == "cpu":
    # Cross-process collectives on CPU devices (local multi-process runs) go over gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if flags.FLAGS.coordinator_address:
    jax.distributed.initialize(
      flags.FLAGS.coordinator_address, flags.FLAGS.num_processes, flags.FLAGS.process_id
    )
  elif flags.FLAGS.distributed:
    jax.distributed.initialize()
  if jax.default_backend() == "cpu":
    host_runtime.keep_freed_memory()  # each step reuses its buffers' pages (host_runtime)
  # Libraries (Orbax, TensorFlow) log through absl: keep them to warnings, and give the run's
  # own progress log (logger "reid_jax") to process 0 only, so there is one readable log.
  logging.set_verbosity(logging.WARNING)
  run_log = std_logging.getLogger("reid_jax")
  run_log.setLevel(std_logging.INFO if jax.process_index() == 0 else std_logging.WARNING)
  handler = std_logging.StreamHandler()
  handler.setFormatter(std_logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
  run_log.addHandler(handler)
  run_log.propagate = False

  _import_tensorflow_quietly()
  from data_prep.errors import UserError

  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  run_log.info(
    "Mode %s, workdir %s, %d devices (%s) over %d processes",
    config.mode,
    workdir,
    jax.device_count(),
    jax.devices()[0].platform,
    jax.process_count(),
  )
  try:
    modes.run_mode(config, workdir)
  except UserError as e:
    raise SystemExit(f"error: {e}") from None


def run():
  """The `reid-jax` console script: the same as `python -m reid_jax.main`, --help included (absl
  takes the usage from `__main__`'s docstring and the main module's key flags)."""
  script = sys.modules["__main__"]
  if script.__name__ != __name__:
    script.__doc__ = __doc__
    for flag in flags.FLAGS.get_key_flags_for_module(__name__):
      flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main)


if __name__ == "__main__":
  run()
