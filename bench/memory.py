r"""Per-device memory of the real train step at the paper's batch, from XLA's compiler.

    python bench/memory.py [--target cpu:8 | tpu:v5e:2x4] [--batch 128]
        [--dtypes float32,bfloat16] [--remat both|on|off] [train_step.py model flags]

The train step (`reid_jax.train.make_train_step`: model, losses, Adam, with the state donated)
is compiled ahead of time for a one-axis `data` mesh of the target's devices, the global batch
sharded over it as in training, and never run: the model state and the batch are abstract
(`nnx.eval_shape`, `jax.ShapeDtypeStruct`), so nothing is allocated. For each compiled step the
table gives XLA's buffer assignment per device: parameters + optimiser state + batch
(arguments), the largest live set of temporaries (activations, gradients, workspace), and the
peak the compiler reports (`peak_memory_in_bytes`, or arguments + outputs - aliased + temporaries
where the backend reports no peak).

Targets:
  cpu:N        N host-platform CPU devices (XLA's CPU compiler: it fuses less than the
               accelerator compilers, so its temporaries are an upper-side estimate).
  tpu:TOPO     a Cloud TPU topology compiled without TPU hardware (needs `libtpu`, e.g.
               `pip install libtpu` matching jax), e.g. `tpu:v5e:2x4` (8 chips, 16 GiB HBM each)
               or `tpu:v4:2x2x1`.
GPUs cannot be compiled for without one; the paper's own machine had 8 GTX TITAN X (12 GiB).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GIB = 1024**3
# Memory per device of the accelerators worth comparing with (vendor datasheets).
DEVICE_MEMORY_GIB = {"GTX TITAN X (the paper's)": 12, "V100 / TPU v5e": 16, "A100 / H100": 80}


def parse_args(argv=None):
  import train_step as step_bench  # noqa: E402  (the sibling benchmark; bench/ is no package)

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  step_bench.add_model_flags(parser)
  parser.add_argument("--target", default="cpu:8", help="cpu:N or tpu:TOPOLOGY")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--remat_modes", choices=("both", "on", "off"), default="both")
  parser.set_defaults(batch=128)
  return parser.parse_args(argv)


def target_devices(target: str):
  """The devices of `target`; for `cpu:N` this must run before JAX starts its CPU backend."""
  import jax

  kind, _, rest = target.partition(":")
  if kind == "cpu":
    count = int(rest or 1)
    jax.config.update("jax_num_cpu_devices", count)
    devices = jax.devices("cpu")
    if len(devices) != count:
      raise SystemExit(f"--target {target}: JAX already started with {len(devices)} CPU devices")
    return devices
  if kind == "tpu":
    from jax.experimental import topologies

    try:
      return topologies.get_topology_desc(topology_name=rest, platform="tpu").devices
    except Exception as error:  # libtpu missing, or an unknown topology name
      raise SystemExit(
        f"--target {target}: cannot describe this TPU topology ({error}); is libtpu installed?"
      ) from error
  raise SystemExit(f"--target must be cpu:N or tpu:TOPOLOGY, got {target!r}")


def compile_step(config, devices) -> dict:
  """Compiles the train step for `devices` without running it; XLA's memory and FLOP figures."""
  import jax
  import numpy as np

  from reid_jax import sharding, train
  from reid_jax import state as state_lib

  import train_step as step_bench  # noqa: E402

  mesh = sharding.make_mesh(devices)
  graphdef, state = state_lib.abstract_state(
    config, num_classes=step_bench.NUM_CLASSES, steps_per_epoch=100, mesh=mesh
  )
  setup = state_lib.TrainSetup(mesh, graphdef, "imagenet", step_bench.NUM_CLASSES, 100)
  d = config.data
  batch = {
    "clips": jax.ShapeDtypeStruct(
      ((d.P * d.K), d.num_frames, d.height, d.width, 3), np.uint8, sharding=setup.batch_sharding
    ),
    "labels": jax.ShapeDtypeStruct(((d.P * d.K),), np.int32, sharding=setup.batch_sharding),
  }
  start = time.perf_counter()
  compiled = train.make_train_step(setup, config).lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  stats = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  live = (
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    - stats.alias_size_in_bytes
    + stats.temp_size_in_bytes
  )
  peak = getattr(stats, "peak_memory_in_bytes", 0) or live
  return dict(
    compile_s=compile_s,
    arguments=stats.argument_size_in_bytes,
    outputs=stats.output_size_in_bytes,
    aliased=stats.alias_size_in_bytes,
    temporaries=stats.temp_size_in_bytes,
    code=stats.generated_code_size_in_bytes,
    peak=peak,
    flops=float(cost.get("flops", float("nan"))) if cost else float("nan"),
  )


def main(argv=None):
  args = parse_args(argv)
  devices = target_devices(args.target)  # before any other JAX use
  import jax

  import train_step as step_bench  # noqa: E402

  remats = {"both": (False, True), "on": (True,), "off": (False,)}[args.remat_modes]
  config = step_bench.load_config(args)
  d = config.data
  if (d.P * d.K) % len(devices):
    raise SystemExit(f"--batch {(d.P * d.K)} does not divide over {len(devices)} devices")
  print(
    f"JAX {jax.__version__}, target {args.target}: {len(devices)} x "
    f"{devices[0].device_kind}, {config.model.name}, global batch {(d.P * d.K)} x "
    f"{d.num_frames}x{d.height}x{d.width} ({(d.P * d.K) // len(devices)} clips per "
    f"device), attention {config.model.attention_impl}"
  )
  header = (
    f"| {'dtype':8} | remat | {'arguments':>9} | {'temporaries':>11} | {'peak':>8} | "
    f"{'TFLOPs/step/device':>18} | {'compile s':>9} |"
  )
  rows = []
  for dtype in args.dtypes.split(","):
    for remat in remats:
      config.model.dtype, config.model.remat = dtype, remat
      r = compile_step(config, devices)
      rows.append((dtype, remat, r))
      print(f"  compiled {dtype} remat={remat} in {r['compile_s']:.1f} s", flush=True)
  print("\nPer device, GiB (XLA buffer assignment of the compiled step):\n")
  print(header)
  print(
    "|"
    + "|".join(
      "-" * (len(c) - 1) + ":" if i > 1 else "-" * len(c)
      for i, c in enumerate(header.split("|")[1:-1])
    )
    + "|"
  )
  for dtype, remat, r in rows:
    print(
      f"| {dtype:8} | {'on' if remat else 'off':5} | {r['arguments'] / GIB:9.2f} | "
      f"{r['temporaries'] / GIB:11.2f} | {r['peak'] / GIB:8.2f} | "
      f"{r['flops'] / 1e12:18.2f} | {r['compile_s']:9.1f} |"
    )
  print()
  for name, gib in DEVICE_MEMORY_GIB.items():
    fits = [
      f"{dtype}/remat {'on' if remat else 'off'}"
      for dtype, remat, r in rows
      if r["peak"] <= gib * GIB
    ]
    print(f"  fits in {gib:2d} GiB ({name}): {', '.join(fits) or 'none'}")


if __name__ == "__main__":
  main()
