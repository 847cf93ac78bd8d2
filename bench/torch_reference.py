r"""The same network and train step in PyTorch, timed beside the JAX step in one run.

    python bench/torch_reference.py [--batch 8] [--steps 3] [--no_compile] [--interleave]
        [--torch_profile] [train_step.py flags]

The PyTorch peer is what a PyTorch video re-id codebase would run: the I3D ResNet-50 with
non-local blocks as PySlowFast defines it (`torch_i3d`: `Conv3d` layers, NCDHW, oneDNN), the
bottleneck head, label-smoothed
cross-entropy + batch-hard triplet loss and `torch.optim.Adam` with coupled weight decay, on the
same uint8 clips and labels as the JAX step. It runs eagerly, then under `torch.compile`
(inductor: forward and backward compiled, the optimiser step eager). Parameter counts of both
networks are checked equal before timing. The table's last column is the speed relative to
PyTorch eager (above 1: faster). `--interleave` takes the JAX and PyTorch eager steps in turn
(both networks in memory at once) and prints the ratio of each pair: on a machine whose speed
drifts with other work, that ratio is steadier than two medians taken minutes apart. The process
runs as `reid_jax.main` does (`reid_jax.host_runtime`; `--jax_default_runtime`: JAX's and glibc's
defaults), PyTorch's steps included; each pair's line gives both steps' page faults.
`--torch_profile` traces one more PyTorch eager step with `torch.profiler` and prints its ops'
self CPU time by what they compute, the peer of `train_step.py --profile`; that step is not
among the timed ones.
"""

import argparse
import collections
import os
import sys
import time

import jax
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reid_jax import config as config_lib  # noqa: E402
from reid_jax.data import NORMALIZATIONS  # noqa: E402
from reid_jax.models import create_model, num_params  # noqa: E402
from reid_jax.models.resnet3d import VARIANTS, Architecture  # noqa: E402

import torch_i3d  # noqa: E402
import train_step as jax_bench  # noqa: E402  (the sibling benchmark; bench/ is no package)


class ReIDNet(nn.Module):
  """The JAX `ReIDNet` of the same `Architecture`, NCDHW: the I3D backbone of `torch_i3d`
  (PySlowFast's layout and names) and the re-id head."""

  def __init__(self, arch: Architecture, num_classes: int):
    super().__init__()
    self.backbone = torch_i3d.I3D(arch)
    self.fc = nn.Linear(self.backbone.feature_dim, arch.bottleneck_dim)
    self.bn = nn.BatchNorm1d(arch.bottleneck_dim)
    self.dropout = nn.Dropout(arch.dropout_rate)
    self.leaky_relu_slope = arch.leaky_relu_slope
    self.classifier = nn.Linear(arch.bottleneck_dim, num_classes)

  def forward(self, clips):  # [B, 3, T, H, W]
    x = self.backbone(clips)
    features = F.leaky_relu(self.bn(self.fc(x.mean((2, 3, 4)))), self.leaky_relu_slope)
    return features, self.classifier(self.dropout(features))


def cross_entropy_label_smoothing(logits, labels, epsilon):
  num_classes = logits.shape[-1]
  targets = (1 - epsilon) * F.one_hot(labels, num_classes) + epsilon / num_classes
  return -(targets * F.log_softmax(logits, -1)).sum(-1).mean()


def batch_hard_triplet(features, labels, margin):
  gram = features @ features.T
  sq = gram.diagonal()
  dist = (sq[:, None] + sq[None, :] - 2 * gram).clamp(min=1e-12).sqrt()
  same = labels[:, None] == labels[None, :]
  d_pos = torch.where(same, dist, torch.zeros_like(dist)).amax(1)
  d_neg = torch.where(same, torch.full_like(dist, float("inf")), dist).amin(1)
  return F.relu(margin + d_pos - d_neg).mean()


def make_loss_fn(model, config):
  mean, std = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in NORMALIZATIONS["imagenet"])
  loss_cfg = config.loss

  def loss_fn(clips_uint8, labels):  # clips [B, T, H, W, 3] uint8
    clips = (clips_uint8.permute(0, 4, 1, 2, 3).float() / 255 - mean) / std
    features, logits = model(clips)
    return cross_entropy_label_smoothing(
      logits, labels, loss_cfg.label_smoothing
    ) + loss_cfg.triplet_weight * batch_hard_triplet(features, labels, loss_cfg.triplet_margin)

  return loss_fn


class TorchStep:
  """The PyTorch peer's train step on `batch`, timed call by call like `CompiledStep`."""

  def __init__(self, config, batch, compiled: bool):
    torch.manual_seed(0)
    arch = Architecture(**VARIANTS[config.model.name], **config_lib.model_overrides(config))
    self.model = ReIDNet(arch, jax_bench.NUM_CLASSES).train()
    o = config.optim
    self.optimizer = torch.optim.Adam(
      self.model.parameters(),
      lr=o.base_lr,
      betas=(o.b1, o.b2),
      eps=o.eps,
      weight_decay=o.weight_decay,
    )
    self.loss_fn = make_loss_fn(self.model, config)
    if compiled:
      self.loss_fn = torch.compile(self.loss_fn)
    self.clips = torch.from_numpy(batch["clips"])
    self.labels = torch.from_numpy(batch["labels"]).long()
    self.times, self.losses, self.faults = [], [], []

  def step(self):
    faults, start = jax_bench.page_faults(), time.perf_counter()
    self.optimizer.zero_grad(set_to_none=True)
    loss = self.loss_fn(self.clips, self.labels)
    loss.backward()
    self.optimizer.step()
    self.losses.append(float(loss.detach()))
    self.times.append(time.perf_counter() - start)
    self.faults.append(jax_bench.page_faults() - faults)

  def result(self) -> dict:
    """The first call is the warm-up (and compilation); the median skips it."""
    return dict(
      warmup_s=self.times[0],
      step_s=float(np.median(self.times[1:])),
      losses=list(self.losses),
      params=sum(p.numel() for p in self.model.parameters()),
    )


# aten op name (a substring of it) -> what it computes, for --torch_profile, first match wins;
# other aten ops are elementwise ops and reductions, the rest autograd's and the optimiser's.
TORCH_OP_ROLES = (
  ("convolution_backward", "convolutions: input and kernel gradients"),
  ("convolution", "convolutions: forward"),
  ("batch_norm", "batch norm, forward and backward"),
  ("mm", "matmuls (non-local attention, head)"),
  ("max_pool", "max-pools, forward and backward"),
  ("copy_", "copies and transposes"),
  ("empty", "allocation"),
  ("resize_", "allocation"),
)


def torch_profile(step: TorchStep) -> None:
  """One more eager step under `torch.profiler`: self CPU time of its ops by role and by op."""
  from torch.profiler import ProfilerActivity, profile

  with profile(activities=[ProfilerActivity.CPU]) as prof:
    step.step()
  ops = [(e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()]
  total = sum(s for _, s in ops)
  roles = collections.Counter()
  for name, seconds in ops:
    role = next((r for key, r in TORCH_OP_ROLES if key in name), None)
    if role is None:
      role = "elementwise and reductions" if name.startswith("aten::") else "other"
    roles[role] += seconds
  print(
    f"  PyTorch eager step under torch.profiler {step.times[-1]:.3f} s; ops' self CPU time "
    f"{total:.3f} s"
  )
  for role, seconds in roles.most_common():
    print(f"    {seconds:8.3f} s {100 * seconds / total:5.1f}%  {role}")
  for name, seconds in sorted(ops, key=lambda o: -o[1])[:12]:
    print(f"    {seconds:8.3f} s {100 * seconds / total:5.1f}%  {name}")


def bench_torch(config, batch, steps: int, compiled: bool) -> dict:
  """Warm-up (and compile) time, median step time and the losses of a PyTorch train run."""
  step = TorchStep(config, batch, compiled)
  for _ in range(steps + 1):
    step.step()
  return step.result()


def interleaved(config, batch, steps: int, profile: bool = False) -> dict:
  """JAX and PyTorch eager steps taken in turn, so both see the same moments of a noisy machine;
  prints each pair's ratio."""
  jax_step, torch_step = jax_bench.CompiledStep(config), TorchStep(config, batch, False)
  for i in range(steps + 1):
    jax_step.step()
    torch_step.step()
    print(
      f"  pair {i}: JAX {jax_step.times[-1]:7.2f} s  PyTorch eager {torch_step.times[-1]:7.2f} s"
      f"  ratio {torch_step.times[-1] / jax_step.times[-1]:.3f}"
      f"  page faults {jax_step.faults[-1]} / {torch_step.faults[-1]}"
      f"{'  (warm-up)' if i == 0 else ''}  load {os.getloadavg()[0]:.1f}",
      flush=True,
    )
  ratios = [t / j for j, t in zip(jax_step.times[1:], torch_step.times[1:])]
  print(f"  median pair ratio (PyTorch eager / JAX): {np.median(ratios):.3f}")
  results = {"JAX (jit, XLA CPU)": jax_step.result(), "PyTorch eager": torch_step.result()}
  if profile:  # after the results: the traced step is no timed one
    torch_profile(torch_step)
  return results


def inference(config, batch, steps: int) -> None:
  """Evaluation-mode features of the same clips, JAX and PyTorch eager in turn (what `eval`,
  `extract` and serving pay); prints each pair and the median ratio."""
  from reid_jax import sharding
  from reid_jax import state as state_lib
  from reid_jax.inference.model import InferenceModel

  setup, state = state_lib.build_state(
    config, num_classes=jax_bench.NUM_CLASSES, steps_per_epoch=100, mesh=sharding.make_mesh()
  )
  model = InferenceModel(
    *state_lib.model_part(setup, state), setup.normalization, 0, {}, setup.mesh
  )
  arch = Architecture(**VARIANTS[config.model.name], **config_lib.model_overrides(config))
  net = ReIDNet(arch, jax_bench.NUM_CLASSES).eval()
  mean, std = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in NORMALIZATIONS[setup.normalization])
  clips_t = torch.from_numpy(batch["clips"])

  def torch_features():
    with torch.no_grad():
      return net((clips_t.permute(0, 4, 1, 2, 3).float() / 255 - mean) / std)[0]

  ratios = []
  for i in range(steps + 1):
    start = time.perf_counter()
    jax.block_until_ready(model.features(batch["clips"]))
    jax_s = time.perf_counter() - start
    start = time.perf_counter()
    torch_features()
    torch_s = time.perf_counter() - start
    if i:
      ratios.append(torch_s / jax_s)
    print(
      f"  pair {i}: JAX {jax_s:6.2f} s  PyTorch eager {torch_s:6.2f} s  ratio "
      f"{torch_s / jax_s:.3f}{'  (warm-up)' if i == 0 else ''}",
      flush=True,
    )
  print(
    f"  median pair ratio (PyTorch eager / JAX), evaluation forward of "
    f"{config_lib.train_batch_size(config)} clips: {np.median(ratios):.3f}"
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  jax_bench.add_model_flags(parser)
  jax_bench.add_runtime_flag(parser)
  parser.add_argument("--no_compile", action="store_true", help="skip torch.compile")
  parser.add_argument("--torch_threads", type=int, default=2)
  parser.add_argument(
    "--interleave",
    action="store_true",
    help="alternate JAX and PyTorch eager steps (fairest on a shared machine)",
  )
  parser.add_argument(
    "--torch_profile",
    action="store_true",
    help="with --interleave: trace one more PyTorch eager step and print its ops by role",
  )
  parser.add_argument(
    "--inference",
    action="store_true",
    help="time the evaluation-mode forward pass instead of the train step",
  )
  args = parser.parse_args()
  if args.torch_profile and not args.interleave:
    parser.error("--torch_profile traces a step of --interleave")
  if args.dtype == "bfloat16":
    parser.error("the PyTorch peer runs float32 only")
  torch.set_num_threads(args.torch_threads)
  jax_bench.apply_runtime(args)  # the same process: PyTorch's steps run under it too
  config = jax_bench.load_config(args)
  batch = jax_bench.random_batch(config)
  if args.inference:
    inference(config, batch, args.steps)
    return

  from flax import nnx

  jax_params = num_params(
    nnx.eval_shape(
      lambda: create_model(
        config.model.name,
        num_classes=jax_bench.NUM_CLASSES,
        rngs=nnx.Rngs(0),
        **config_lib.model_overrides(config),
      )
    )
  )
  load = os.getloadavg()[0]
  if args.interleave:
    results = interleaved(config, batch, args.steps, profile=args.torch_profile)
    jax_bench.report(config, results["JAX (jit, XLA CPU)"])
  else:
    results = {"JAX (jit, XLA CPU)": jax_bench.bench_jax(config, args.steps)}
    jax_bench.report(config, results["JAX (jit, XLA CPU)"])
    results["PyTorch eager"] = bench_torch(config, batch, args.steps, compiled=False)
  if not args.no_compile:
    try:
      results["PyTorch torch.compile"] = bench_torch(config, batch, args.steps, compiled=True)
    except Exception as e:  # inductor needs a working C++ toolchain; report, don't abort
      print(f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0]}")
  torch_params = results["PyTorch eager"]["params"]
  print(
    f"parameters: JAX {jax_params:,}  PyTorch {torch_params:,}"
    f"  {'(equal)' if jax_params == torch_params else '(DIFFER)'}"
  )
  if jax_params != torch_params:
    raise SystemExit("the two networks differ")

  d = config.data
  flops = results["JAX (jit, XLA CPU)"]["flops"]
  eager_s = results["PyTorch eager"]["step_s"]
  print(
    f"\n{config.model.name}, batch {config_lib.train_batch_size(config)} x {d.num_frames}x{d.height}x{d.width}, "
    f"float32, torch {torch.__version__} with {args.torch_threads} threads, "
    f"load average at start {load:.1f}"
  )
  print(
    f"| {'implementation':<24}| compile/warm-up s | step s | clips/s | GFLOP/s | vs PyTorch eager |"
  )
  print(f"|{'-' * 25}|------------------:|-------:|--------:|--------:|-----------------:|")
  for name, r in results.items():
    first = r.get("compile_s", r.get("warmup_s"))
    print(
      f"| {name:<24}| {first:17.1f} | {r['step_s']:6.2f} | {config_lib.train_batch_size(config) / r['step_s']:7.2f} "
      f"| {flops / r['step_s'] / 1e9:7.1f} | {eager_s / r['step_s']:15.2f}x |"
    )
  for name, r in results.items():
    print(f"losses {name}: {' '.join(f'{x:.3f}' for x in r['losses'])}")


if __name__ == "__main__":
  main()
