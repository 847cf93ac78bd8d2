r"""Compile time, step time, clips/s and FLOP/s of the real train step (model, losses, Adam).

    python bench/train_step.py [--config configs/mars.py] [--batch 8] [--steps 3]
        [--dtype float32|bfloat16] [--remat] [--attention_impl einsum|xla|cudnn]
        [--conv_grads auto|xla] [--frame_chunk_bytes N] [--compare_frame_chunks N]
        [--width 64] [--depths 3,4,6,3] [--frames 8 --height 256 --img_width 128]
        [--profile DIR] [--jax_default_runtime]

The step is `reid_jax.train.make_train_step` on the state of `reid_jax.state.build_state` (625
classes, the MARS training identities) over every local device, fed random uint8 clips whose
labels form identity-balanced P x K groups (K = 4) so the batch-hard triplet loss mines as in
training. No dataset is read. FLOPs are XLA's cost analysis of the compiled step (a multiply-add is 2 FLOPs;
forward, backward and optimiser); on a GPU, MFU is against the device's dense bf16 peak whatever
`--dtype`, the usual convention. `--profile DIR` traces one more step with `jax.profiler` into DIR
(TensorBoard's profile plugin reads it) and prints the time of XLA's ops per kind (the fusion or
op name without its number) and by what they compute (convolutions and matmuls: forward, input
and kernel gradients; copies; the rest), which is where the CPU step's time goes.

The process runs as `reid_jax.main` does (`reid_jax.host_runtime`: synchronous CPU dispatch,
freed memory kept), and prints the minor page faults per step; `--jax_default_runtime` keeps
JAX's and glibc's defaults instead, which fault the step's whole temporary buffer in every step.
Each step's time and page faults follow (the first call's and the heap-growing second's too).
`--frame_chunk_bytes N` sets the CPU convolutions' chunks of frames (`cpu_conv.FRAME_CHUNK_BYTES`;
0: whole batches, as before they had chunks); `--compare_frame_chunks N` compiles the step with
the default and with N, and takes their steps in turns (`--steps` + 2 pairs).
"""

import argparse
import collections
import glob
import gzip
import importlib.util
import json
import math
import os
import re
import resource
import sys
import time

import jax
import numpy as np

from reid_jax import host_runtime, sharding, train
from reid_jax import state as state_lib
from reid_jax.models import cpu_conv

NUM_CLASSES = 625
TRIPLET_K = 4

# Dense bf16 peak FLOP/s by `device_kind` (vendor datasheets, without sparsity).
BF16_PEAK_FLOPS = {
  "NVIDIA H100 80GB HBM3": 989e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA A100-SXM4-80GB": 312e12,
  "NVIDIA A100-SXM4-40GB": 312e12,
  "NVIDIA A100 80GB PCIe": 312e12,
}


def bf16_peak(device_kind: str):
  """The peak of the longest table key that prefixes `device_kind` (None: unknown device)."""
  matches = [k for k in BF16_PEAK_FLOPS if device_kind.startswith(k)]
  return BF16_PEAK_FLOPS[max(matches, key=len)] if matches else None


def add_model_flags(parser):
  parser.add_argument(
    "--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "mars.py")
  )
  parser.add_argument("--batch", type=int, default=8, help="global clips per step")
  parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
  parser.add_argument("--remat", action="store_true")
  parser.add_argument("--attention_impl", choices=("einsum", "xla", "cudnn"), default=None)
  parser.add_argument(
    "--conv_grads", choices=("auto", "xla"), default=None, help="conv kernel gradients"
  )
  parser.add_argument("--width", type=int, default=None, help="channels after the stem")
  parser.add_argument("--depths", default=None, help="blocks per stage, e.g. 1,1,1,1")
  parser.add_argument("--frames", type=int, default=None)
  parser.add_argument("--height", type=int, default=None)
  parser.add_argument("--img_width", type=int, default=None)
  parser.add_argument(
    "--frame_chunk_bytes",
    type=int,
    default=None,
    help="bytes of the CPU conv chunks of frames (cpu_conv.FRAME_CHUNK_BYTES); 0: whole batches",
  )


def add_runtime_flag(parser):
  parser.add_argument(
    "--jax_default_runtime",
    action="store_true",
    help="keep JAX's asynchronous CPU dispatch and glibc's default malloc, as a process runs "
    "without reid_jax.host_runtime (what reid_jax.main sets up)",
  )


def apply_runtime(args) -> None:
  """What `reid_jax.main` sets up on a CPU host (`reid_jax.host_runtime`), unless
  `--jax_default_runtime`. Called before the first JAX computation."""
  if not args.jax_default_runtime:
    host_runtime.configure_before_backends()
    host_runtime.keep_freed_memory()


def page_faults() -> int:
  """Minor page faults of this process so far."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def load_config(args):
  spec = importlib.util.spec_from_file_location("bench_config", args.config)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for field, value in (
    ("dtype", args.dtype),
    ("attention_impl", args.attention_impl),
    ("conv_grads", args.conv_grads),
    ("width", args.width),
  ):
    if value is not None:
      config.model[field] = value
  if args.remat:
    config.model.remat = True
  if args.depths:
    config.model.stage_depths = tuple(int(d) for d in args.depths.split(","))
  for field, value in (
    ("num_frames", args.frames),
    ("height", args.height),
    ("width", args.img_width),
  ):
    if value is not None:
      config.data[field] = value
  # P x K = the batch: K the largest divisor of it up to the paper's K.
  config.data.K = max(k for k in range(1, min(TRIPLET_K, args.batch) + 1) if args.batch % k == 0)
  config.data.P = args.batch // config.data.K
  config.init.kinetics_i3d = config.init.torchvision_resnet50 = config.init.checkpoint = ""
  if args.frame_chunk_bytes is not None:  # read when the step is traced
    cpu_conv.FRAME_CHUNK_BYTES = args.frame_chunk_bytes or sys.maxsize
  return config


def random_batch(config, seed: int = 0) -> dict:
  """uint8 clips and P x K labels, the shapes and dtypes the input pipeline emits."""
  d = config.data
  rng = np.random.default_rng(seed)
  clips = rng.integers(0, 256, (d.P * d.K, d.num_frames, d.height, d.width, 3), np.uint8)
  labels = np.repeat(rng.choice(NUM_CLASSES, d.P, replace=False), d.K).astype(np.int32)
  return {"clips": clips, "labels": labels}


class CompiledStep:
  """The compiled train step of `config` with its state and a random batch."""

  def __init__(self, config):
    setup, state = state_lib.build_state(
      config, num_classes=NUM_CLASSES, steps_per_epoch=100, mesh=sharding.make_mesh()
    )
    self.batch = sharding.global_batch(random_batch(config), setup.batch_sharding)
    step_fn = train.make_train_step(setup, config)
    start = time.perf_counter()
    self.compiled = step_fn.lower(state, self.batch).compile()
    self.compile_s = time.perf_counter() - start
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.flops = float(cost.get("flops", float("nan")))
    self.state = state
    self.times, self.losses, self.faults = [], [], []

  def step(self):
    faults, start = page_faults(), time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.batch)
    self.losses.append(float(jax.block_until_ready(metrics["loss"])))
    self.times.append(time.perf_counter() - start)
    self.faults.append(page_faults() - faults)

  def result(self) -> dict:
    """The first call pays for buffer allocation, so the median skips it."""
    return dict(
      compile_s=self.compile_s,
      step_s=float(np.median(self.times[1:])),
      first_s=self.times[0],
      faults=int(np.median(self.faults[1:])),
      flops=self.flops,
      losses=self.losses,
      times=self.times,
      all_faults=self.faults,
    )


def profile_step(step: CompiledStep, logdir: str, top: int = 15) -> None:
  """Traces one step and prints the summed time of XLA's ops by kind (name without suffix)."""
  jax.profiler.start_trace(logdir)
  step.step()
  jax.profiler.stop_trace()
  trace = max(
    glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.trace.json.gz")),
    key=os.path.getmtime,
  )
  events = [e for e in json.load(gzip.open(trace))["traceEvents"] if e.get("ph") == "X"]
  # Leaves are XLA's ops; the rest are the runtime's and Python's own spans around them.
  runtime = ("$", "Thunk", "Pjit", "Slinky", "Common", "Parse")
  kinds, counts = collections.Counter(), collections.Counter()
  for e in events:
    if not e["name"].startswith(runtime):
      kind = re.sub(r"\.\d+$", "", e["name"])
      kinds[kind] += e["dur"] / 1e6
      counts[kind] += 1
  total = sum(kinds.values())
  print(
    f"  profiled step    {step.times[-1]:8.3f} s; XLA ops {total:.3f} s in all (ops of "
    f"one step may overlap), trace in {logdir}"
  )
  for kind, seconds in kinds.most_common(top):
    print(f"    {seconds:8.3f} s {100 * seconds / total:5.1f}%  x{counts[kind]:<4d} {kind}")
  ops = collections.Counter()
  for e in events:
    if "hlo_op" in e.get("args", {}):
      ops[e["args"]["hlo_op"]] += e["dur"] / 1e6
  roles = collections.Counter()
  classify = op_roles(step.compiled.as_text())
  for op, seconds in ops.items():
    roles[classify(op)] += seconds
  print("  the same ops by what they compute:")
  for role, seconds in roles.most_common():
    print(f"    {seconds:8.3f} s {100 * seconds / total:5.1f}%  {role}")


def op_roles(hlo_text: str):
  """op name -> what it computes in the train step, from the compiled HLO: convolutions and
  matmuls (XLA's dots and YNN fusions) split into forward, input gradient and kernel gradient
  (an output of a parameter's shape or of one tap's `[C_in, C_out]`, in any dimension order, or
  for a convolution of a parameter's size: XLA lays out conv kernel gradients its own way),
  then copies, data movement and the rest (elementwise and reduction fusions)."""
  lines, param_shapes, param_sizes, in_entry = {}, set(), set(), False
  for line in hlo_text.splitlines():
    in_entry = line.startswith("ENTRY") or (in_entry and not line.startswith("}"))
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\]\S* (.*)", line)
    if m:
      dims = tuple(sorted(int(d) for d in m.group(2).split(",") if d and d != "1"))
      lines.setdefault(m.group(1), (dims, m.group(3)))
      if in_entry and m.group(3).startswith("parameter(") and len(dims) >= 2:
        # The whole kernel, and one tap's `[C_in, C_out]` of a conv kernel.
        full = [int(d) for d in m.group(2).split(",")]
        param_shapes.update({dims, tuple(sorted(full[-2:]))})
        param_sizes.add(math.prod(dims))

  def role(op):
    dims, rest = lines.get(op, ((), ""))
    meta = re.search(r'op_name="([^"]*)"', rest)
    meta = meta.group(1) if meta else ""
    if op.startswith(("ynn_fusion", "dot", "convolution")):
      conv = "conv_general_dilated" in meta or op.startswith("convolution") or len(dims) == 4
      what = "convolutions" if conv else "matmuls"
      backward = "transpose(" in meta or not meta
      if backward and (dims in param_shapes or (conv and math.prod(dims) in param_sizes)):
        return f"{what}: kernel gradients"
      return f"{what}: input gradients" if "transpose(" in meta else f"{what}: forward"
    if "transpose" in op or op.startswith("copy"):
      return "copies and transposes"
    if any(k in op for k in ("slice", "pad", "concatenate")):
      return "slices, pads, concatenations"
    return "elementwise and reduction fusions"

  return role


def bench_jax(config, steps: int) -> dict:
  """Compiles and times the train step; returns seconds, FLOPs and the loss of every step."""
  return run_steps(config, steps).result()


def run_steps(config, steps: int) -> CompiledStep:
  step = CompiledStep(config)
  for _ in range(steps + 1):
    step.step()
  return step


def report(config, result: dict) -> None:
  device = jax.devices()[0]
  step_s, flops = result["step_s"], result["flops"]
  d = config.data
  print(
    f"JAX {jax.__version__}, {jax.device_count()} x {device.device_kind} "
    f"({device.platform}), {config.model.name} {config.model.dtype}, "
    f"batch {d.P * d.K} x {d.num_frames}x{d.height}x{d.width}, "
    f"remat {config.model.remat}, attention {config.model.attention_impl}, "
    f"conv grads {config.model.conv_grads}"
  )
  print(f"  compile          {result['compile_s']:8.1f} s")
  print(f"  step (median)    {step_s:8.3f} s   (first call {result['first_s']:.3f} s)")
  print(f"  page faults      {result['faults']:8d}   per step (median; the process's)")
  print(f"  clips/s          {(d.P * d.K) / step_s:8.2f}")
  print(f"  GFLOPs/step      {flops / 1e9:8.1f}   (XLA cost analysis of the compiled step)")
  print(f"  achieved         {flops / step_s / 1e9:8.1f} GFLOP/s")
  peak = bf16_peak(device.device_kind) if device.platform == "gpu" else None
  if peak:
    print(
      f"  MFU              {100 * flops / step_s / (peak * jax.device_count()):8.1f} % "
      f"of {peak / 1e12:.0f} TFLOP/s bf16 per device"
    )
  else:
    print("  MFU              n/a (no bf16 peak known for this device)")
  print(f"  losses           {' '.join(f'{x:.4f}' for x in result['losses'])}")
  print(f"  each step        {' '.join(f'{t:.2f}' for t in result['times'])} s")
  print(f"  its page faults  {' '.join(str(f) for f in result['all_faults'])}")


def compare_frame_chunks(config, other_bytes: int, pairs: int) -> None:
  """The step with the module's `FRAME_CHUNK_BYTES` and with `other_bytes` (0: whole batches),
  both compiled in this process and stepped in turns (the order swapped every pair), so both see
  the same moments of a noisy machine; prints each pair's ratio and their median after the two
  heap-growing pairs."""
  ours = CompiledStep(config)
  default, cpu_conv.FRAME_CHUNK_BYTES = cpu_conv.FRAME_CHUNK_BYTES, other_bytes or sys.maxsize
  try:
    other = CompiledStep(config)
  finally:
    cpu_conv.FRAME_CHUNK_BYTES = default
  ratios = []
  for i in range(pairs):
    for step in (ours, other) if i % 2 == 0 else (other, ours):
      step.step()
    ratios.append(other.times[-1] / ours.times[-1])
    print(
      f"  pair {i}: {default} bytes {ours.times[-1]:6.2f} s ({ours.faults[-1]} faults)  "
      f"{other_bytes} bytes {other.times[-1]:6.2f} s ({other.faults[-1]} faults)  "
      f"ratio {ratios[-1]:.3f}",
      flush=True,
    )
  print(
    f"  median ratio ({other_bytes} bytes / {default}) from pair 2: {np.median(ratios[2:]):.3f}"
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_model_flags(parser)
  add_runtime_flag(parser)
  parser.add_argument("--profile", default=None, help="trace one more step into this directory")
  parser.add_argument(
    "--compare_frame_chunks",
    type=int,
    default=None,
    metavar="BYTES",
    help="step in turns against the same step with these FRAME_CHUNK_BYTES (0: whole batches)",
  )
  args = parser.parse_args()
  apply_runtime(args)
  config = load_config(args)
  if args.compare_frame_chunks is not None:
    compare_frame_chunks(config, args.compare_frame_chunks, args.steps + 2)
    return
  step = run_steps(config, args.steps)
  report(config, step.result())
  if args.profile:
    profile_step(step, args.profile)


if __name__ == "__main__":
  main()
