r"""Training-mode BatchNorm + ReLU, forward and backward, on the paper's activation shapes:
`nnx.BatchNorm` differentiated by JAX against a hand-written backward under `jax.custom_vjp`.

    python bench/batch_norm.py [--batch 2] [--reps 5]

The hand-written backward is the textbook one, from the saved normalised input:
`dx = scale * rsqrt(var + eps) / n * (n * dy - sum(dy) - x_hat * sum(dy * x_hat))`. It is
checked against JAX's gradient (relative 1e-4) before it is timed. Both are jitted; the time is
the median of `--reps` calls, the two forms alternating. Nothing here is used by the network:
it measures whether such a backward would pay on this CPU.
"""

import argparse
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from timing import seconds

EPS = 1e-5
# (name, [B, T, H, W, C] at batch 1): the outputs of the stem and of each stage's convs, 8 x 256
# x 128 clips (res2 keeps 8 frames, later stages 4).
SHAPES = (
  ("stem 64", (1, 8, 128, 64, 64)),
  ("res2 64", (1, 8, 64, 32, 64)),
  ("res2 256", (1, 8, 64, 32, 256)),
  ("res3 128", (1, 4, 32, 16, 128)),
  ("res3 512", (1, 4, 32, 16, 512)),
  ("res4 1024", (1, 4, 16, 8, 1024)),
  ("res5 2048", (1, 4, 8, 4, 2048)),
)


def bn_relu_nnx(x, scale, bias):
  """nnx.BatchNorm in training mode (its statistics over every axis but the last), then ReLU."""
  bn = nnx.BatchNorm(x.shape[-1], epsilon=EPS, rngs=nnx.Rngs(0))
  bn.scale.value, bn.bias.value = scale, bias
  return jax.nn.relu(bn(x))


@jax.custom_vjp
def bn_relu_fused(x, scale, bias):
  return _fused_forward(x, scale, bias)[0]


def _fused_forward(x, scale, bias):
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  var = jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)
  inv = jax.lax.rsqrt(var + EPS)
  x_hat = (x - mean) * inv
  y = jax.nn.relu(x_hat * scale + bias)
  return y, (x_hat, inv, scale, y)


def _fused_bwd(residuals, dy):
  x_hat, inv, scale, y = residuals
  dy = jnp.where(y > 0, dy, 0.0)  # through the ReLU
  axes = tuple(range(dy.ndim - 1))
  n = np.prod([dy.shape[a] for a in axes])
  dbias = jnp.sum(dy, axes)
  dscale = jnp.sum(dy * x_hat, axes)
  dx = (scale * inv / n) * (n * dy - dbias - x_hat * dscale)
  return dx, dscale, dbias


bn_relu_fused.defvjp(_fused_forward, _fused_bwd)


def train_pass(fn):
  """`(x, scale, bias, cotangent) -> gradients` of `sum(fn(x) * cotangent)`, jitted."""
  loss = lambda x, s, b, g: jnp.sum(fn(x, s, b) * g)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--reps", type=int, default=5)
  args = parser.parse_args()
  forms = {"nnx + autodiff": train_pass(bn_relu_nnx), "custom_vjp": train_pass(bn_relu_fused)}
  print(
    f"batch {args.batch}, float32, forward + backward of BatchNorm + ReLU, median of {args.reps}"
  )
  print(f"{'activation':<12} {'elements':>11} {'autodiff ms':>12} {'custom ms':>10} {'ratio':>6}")
  totals = dict.fromkeys(forms, 0.0)
  rng = np.random.default_rng(0)
  for name, shape in SHAPES:
    shape = (args.batch, *shape[1:])
    c = shape[-1]
    inputs = (
      jnp.asarray(rng.normal(1.0, 2.0, shape), jnp.float32),
      jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32),
      jnp.asarray(rng.normal(0, 0.1, c), jnp.float32),
      jnp.asarray(rng.normal(0, 1, shape), jnp.float32),
    )
    want, got = (jax.device_get(f(*inputs)) for f in forms.values())
    for w, g, what in zip(want, got, ("input", "scale", "bias")):
      err = np.abs(w - g).max() / max(np.abs(w).max(), 1e-30)
      if err > 1e-4:
        raise AssertionError(f"{name}: the custom {what} gradient differs by {err:.2e}")
    times = {k: [] for k in forms}
    for f in forms.values():  # compile and warm up
      jax.block_until_ready(f(*inputs))
    for _ in range(args.reps):
      for k, f in forms.items():
        times[k].append(seconds(lambda f=f: jax.block_until_ready(f(*inputs))))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in forms:
      totals[k] += med[k]
    a, b = med["nnx + autodiff"], med["custom_vjp"]
    print(f"{name:<12} {np.prod(shape):>11,} {1e3 * a:>12.2f} {1e3 * b:>10.2f} {a / b:>6.2f}")
  a, b = totals["nnx + autodiff"], totals["custom_vjp"]
  print(f"{'sum':<12} {'':>11} {1e3 * a:>12.2f} {1e3 * b:>10.2f} {a / b:>6.2f}")


if __name__ == "__main__":
  main()
