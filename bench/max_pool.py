r"""The network's max-pools, forward and backward, on the paper's activation shapes: the custom
gradient of `reid_jax.models.layers.max_pool` against JAX's autodiff of the same slices'
maximum (what the model ran before) and against `reduce_window` (`nnx.max_pool`).

    python bench/max_pool.py [--batch 2] [--reps 5]

Each form computes `grad(sum(pool(relu(x)) * probe))`, so the ReLU's backward fuses with the
pool's as it does in the network; the three gradients are checked equal (relative 1e-5) on the
random inputs before they are timed. All are jitted; the time is the median of `--reps` calls,
the forms taking turns.
"""

import argparse
import functools
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from timing import seconds

from reid_jax import host_runtime
from reid_jax.models import layers

# (name, [B, T, H, W, C] at batch 1 of the pool's input, window, strides, padding): 8 x 256 x 128
# clips through the I3D ResNet-50 NL (stem pool unpadded as in the Caffe2 I3D; `resnet3d50_nl`).
POOLS = (
  ("stem 3x3/2", (1, 8, 128, 64, 64), (1, 3, 3), (1, 2, 2), ((0, 0), (0, 0), (0, 0))),
  ("temporal 2x1x1/2", (1, 8, 63, 31, 256), (2, 1, 1), (2, 1, 1), ((0, 0),) * 3),
  ("res3 non-local keys 1x2x2", (1, 4, 32, 16, 256), (1, 2, 2), (1, 2, 2), ((0, 0),) * 3),
  ("res4 non-local keys 1x2x2", (1, 4, 16, 8, 512), (1, 2, 2), (1, 2, 2), ((0, 0),) * 3),
)


def autodiff_slices(x, window, strides, padding):
  """The slices' maximum as the model computed it before, differentiated by JAX."""
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  return functools.reduce(jnp.maximum, layers._window_taps(x, window, strides))


FORMS = {
  "custom VJP (layers.max_pool)": layers.max_pool,
  "autodiff of slices": autodiff_slices,
  "reduce_window": lambda x, w, s, p: nnx.max_pool(x, w, strides=s, padding=p),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--reps", type=int, default=5)
  args = parser.parse_args()
  host_runtime.configure_before_backends()
  host_runtime.keep_freed_memory()
  rng = np.random.default_rng(0)
  print(f"forward + backward, ms (median of {args.reps}), batch {args.batch}")
  print("| pool | input | " + " | ".join(FORMS) + " | autodiff / custom |")
  print("|---|---|" + "---:|" * (len(FORMS) + 1))
  totals = dict.fromkeys(FORMS, 0.0)
  for name, shape, window, strides, padding in POOLS:
    shape = (args.batch, *shape[1:])
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    out_shape = jax.eval_shape(lambda x: layers.max_pool(x, window, strides, padding), x).shape
    probe = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
    grads = {
      form: jax.jit(
        jax.grad(
          lambda x, pool=pool: jnp.sum(pool(jax.nn.relu(x), window, strides, padding) * probe)
        )
      )
      for form, pool in FORMS.items()
    }
    reference = grads["reduce_window"](x)
    for form, grad in grads.items():  # also each one's compilation, before the timing
      np.testing.assert_allclose(grad(x), reference, rtol=1e-5, atol=1e-6, err_msg=form)
    times = {form: [] for form in FORMS}
    for _ in range(args.reps):
      for form, grad in grads.items():
        times[form].append(seconds(lambda grad=grad: jax.block_until_ready(grad(x))))
    medians = {form: 1e3 * statistics.median(t) for form, t in times.items()}
    for form in FORMS:
      totals[form] += medians[form]
    ratio = medians["autodiff of slices"] / medians["custom VJP (layers.max_pool)"]
    cells = " | ".join(f"{medians[form]:.1f}" for form in FORMS)
    print(f"| {name} | {list(shape)} | {cells} | {ratio:.2f} |")
  ratio = totals["autodiff of slices"] / totals["custom VJP (layers.max_pool)"]
  print(f"| all | | {' | '.join(f'{totals[form]:.1f}' for form in FORMS)} | {ratio:.2f} |")


if __name__ == "__main__":
  main()
