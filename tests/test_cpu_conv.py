"""The convolutions with tap-wise kernel gradients (`reid_jax.models.cpu_conv`): their values and
gradients against XLA's, alone and in the whole network, and XLA's convolutions kept off CPUs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from reid_jax.models import cpu_conv, create_model

TINY = dict(stage_depths=(1, 2, 2, 1), width=8, bottleneck_dim=16)


def conv3d_reference(x, kernel, stride):
  """`[k_t, k_h, k_w, C, D]` 'same' 3D convolution of a clip, spatial stride, by lax."""
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    (1, stride, stride),
    [(k // 2, k // 2) for k in kernel.shape[:3]],
    dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
    precision="highest",
  )


def vjp(f, *args, probe_seed=0):
  """f(*args) and its cotangents for one random output cotangent."""
  out, pullback = jax.vjp(f, *args)
  probe = jax.random.normal(jax.random.key(probe_seed), out.shape).astype(out.dtype)
  return out, pullback(probe)


def assert_grads_close(got, want, rtol):
  for g, w in zip(got, want):
    g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * np.abs(w).max())


@pytest.mark.parametrize("k_t", [1, 3, 5])
def test_pointwise_temporal_conv_gradients(k_t):
  """`k_t x 1 x 1`: the custom VJP against autodiff of the einsum form and of lax's 3D conv."""
  rng = np.random.default_rng(k_t)
  x = jnp.asarray(rng.normal(size=(2, 6, 5, 3, 12)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k_t, 12, 10)), jnp.float32)
  reference = lambda x, k: conv3d_reference(x, k[:, None, None], 1)
  (out, grads), (want_out, want), (ref_out, ref) = jax.jit(
    lambda x, k: [
      vjp(f, x, k)
      for f in (
        cpu_conv.pointwise_temporal_conv_tapwise,
        cpu_conv.pointwise_temporal_conv,
        reference,
      )
    ]
  )(x, kernel)
  # On CPUs the forward is the wide matmul's: the same sums, rounded otherwise.
  np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
  assert_grads_close(grads, want, 1e-5)
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  assert_grads_close(grads, ref, 1e-5)


@pytest.mark.parametrize(
  "k, stride, channels, size",
  [
    (1, 1, (6, 5), (9, 7)),
    (3, 1, (6, 5), (9, 7)),
    (3, 2, (6, 5), (9, 7)),
    (5, 1, (4, 6), (9, 8)),
    (5, 2, (4, 6), (9, 8)),
    (7, 1, (3, 4), (11, 9)),
    (7, 2, (15, 8), (16, 12)),  # the stem: 5 time shifts x 3 colours, 7x7 stride 2
  ],
)
def test_frame_conv_gradients(k, stride, channels, size):
  """`k x k` over frames: the custom VJP, and both of its CPU kernel gradients (tap-wise, XLA's
  by chunks of frames and by slabs of rows, uneven ones included), against autodiff of lax's 2D
  convolution."""
  rng = np.random.default_rng(k * 10 + stride)
  frames = jnp.asarray(rng.normal(size=(10, *size, channels[0])), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, *channels)), jnp.float32)
  ours = lambda f, w: cpu_conv.frame_conv_tapwise(f, w, stride)
  xla = lambda f, w: cpu_conv.frame_conv(f, w, stride)
  h_out = (size[0] - 1) // stride + 1

  def run(f, w):
    (out, grads), (want_out, want) = vjp(ours, f, w), vjp(xla, f, w)
    dy = jax.random.normal(jax.random.key(0), want_out.shape)
    taps = cpu_conv._frame_kernel_grad_taps(f, dy, k, k, stride)
    by_frames = cpu_conv._frame_kernel_grad_chunked(f, dy, w, stride, (2, h_out))
    # Slabs of 3 output rows, the last one shorter where 3 does not divide them.
    by_rows = cpu_conv._frame_kernel_grad_chunked(f, dy, w, stride, (5, 3))
    return out, grads, want_out, want, [taps, by_frames, by_rows]

  out, grads, want_out, want, kernel_grads = jax.jit(run)(frames, kernel)
  np.testing.assert_array_equal(out, want_out)
  assert_grads_close(grads, want, 1e-5)
  assert_grads_close(kernel_grads, [want[1]] * 3, 1e-5)


def test_kernel_grad_chunks_of_the_papers_network(monkeypatch):
  """Chunks of XLA's kernel gradient for the paper's 8 x 256 x 128 clips at batch 2 (16 frames
  before the temporal pool, 8 after): a quarter of a frame of the stem, one frame of res2's 3x3,
  two of res3's, the whole batch of res4's (8 frames in 2 MiB) and of res5's; bfloat16 frames
  take twice as many."""
  chunks = cpu_conv.kernel_grad_chunks
  assert chunks((16, 256, 128, 15), (16, 128, 64, 64), 4) == (1, 32)
  assert chunks((16, 63, 31, 64), (16, 63, 31, 64), 4) == (1, 63)
  assert chunks((16, 63, 31, 64), (16, 63, 31, 64), 2) == (2, 63)
  assert chunks((8, 32, 16, 128), (8, 32, 16, 128), 4) == (2, 32)
  assert chunks((8, 16, 8, 256), (8, 16, 8, 256), 4) == (8, 16)
  assert chunks((16, 16, 8, 256), (16, 16, 8, 256), 4) == (8, 16)  # batch 4: 8 of 16
  assert chunks((8, 8, 4, 512), (8, 8, 4, 512), 4) == (8, 8)
  assert chunks((6, 63, 31, 32), (6, 63, 31, 32), 4) == (2, 63)  # a divisor of the frames
  assert chunks((7, 63, 31, 32), (7, 63, 31, 32), 4) == (1, 63)
  # The demo's stem at batch 32 (configs/synthetic.py): 8 frames of 155 kB, not the 4 of 1 MiB.
  assert chunks((128, 64, 32, 15), (128, 32, 16, 16), 4) == (8, 32)
  # Frames of 272 kB: 7 fit in 2 MiB, short of MIN_CHUNK_FRAMES, so the 1 MiB rule's 3 (of 9).
  assert chunks((9, 32, 32, 64), (9, 32, 32, 4), 4) == (3, 32)
  # A frame of 400 bytes and a budget of 134: slabs of a third of its 10 rows, rounded up.
  monkeypatch.setattr(cpu_conv, "KERNEL_GRAD_CHUNK_BYTES", 134)
  assert chunks((5, 10, 5, 1), (5, 10, 5, 1), 4) == (1, 4)


def test_forward_by_chunks_of_frames(monkeypatch):
  """On CPUs a `k x k` conv's forward runs on chunks of frames (here a budget of 3 of the 10
  frames: chunks of 2, the largest divisor that fits), with the whole batch's values and
  gradients; lowered for a GPU it is one convolution."""
  rng = np.random.default_rng(5)
  frames = jnp.asarray(rng.normal(size=(10, 9, 7, 6)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 6, 5)), jnp.float32)
  per_frame = 4 * (9 * 7 * 6 + 5 * 4 * 5)
  monkeypatch.setattr(cpu_conv, "FRAME_CHUNK_BYTES", 3 * per_frame)
  assert cpu_conv.frame_chunks(frames.shape, (10, 5, 4, 5), 4) == 2
  ours = lambda f, w: cpu_conv.frame_conv_tapwise(f, w, 2)
  (out, grads), (want_out, want) = (
    jax.jit(lambda f, w: vjp(ours, f, w))(frames, kernel),
    vjp(lambda f, w: cpu_conv.frame_conv(f, w, 2), frames, kernel),
  )
  np.testing.assert_array_equal(out, want_out)
  assert_grads_close(grads, want, 1e-5)
  loss_grad = jax.jit(jax.grad(lambda f, w: jnp.sum(ours(f, w) ** 2))).trace(frames, kernel)

  def convolutions(platform):
    return loss_grad.lower(lowering_platforms=(platform,)).as_text().count("stablehlo.convolution")

  # The gradient of the frames alone: the forward in 5 chunks on the CPU, the input gradient whole.
  assert (convolutions("cpu"), convolutions("cuda")) == (6, 2)


def test_frame_chunks_of_the_papers_network():
  """Forward chunks for the paper's 8 x 256 x 128 clips: the stem (4 MB a frame in and out) in
  chunks of 16 frames at batch 8, whole at batch 2; res3's strided 3x3 (1.3 MB a frame) in
  chunks of 32 at batch 8; res2's 3x3 (1 MB a frame) whole at batch 8; the demo's stem whole."""
  chunk = cpu_conv.frame_chunks
  assert chunk((64, 256, 128, 15), (64, 128, 64, 64), 4) == 16
  assert chunk((16, 256, 128, 15), (16, 128, 64, 64), 4) == 16
  assert chunk((64, 63, 31, 128), (64, 32, 16, 128), 4) == 32
  assert chunk((16, 63, 31, 128), (16, 32, 16, 128), 4) == 16
  assert chunk((64, 63, 31, 64), (64, 63, 31, 64), 4) == 64
  assert chunk((128, 64, 32, 15), (128, 32, 16, 16), 4) == 128
  assert chunk((3, 4096, 4096, 4), (3, 4096, 4096, 4), 4) == 1  # a frame over the budget


def test_bfloat16_gradients():
  """bfloat16 compute (`model.dtype`): both custom VJPs within bfloat16's precision of float32."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 4, 6, 5, 16)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 16, 8)), jnp.float32)
  frames = jnp.asarray(rng.normal(size=(4, 9, 7, 16)), jnp.float32)
  kernel2d = jnp.asarray(rng.normal(size=(3, 3, 16, 8)), jnp.float32)
  cases = [
    (cpu_conv.pointwise_temporal_conv_tapwise, cpu_conv.pointwise_temporal_conv, x, kernel),
    (
      lambda f, w: cpu_conv.frame_conv_tapwise(f, w, 2),
      lambda f, w: cpu_conv.frame_conv(f, w, 2),
      frames,
      kernel2d,
    ),
  ]
  for ours, xla, a, b in cases:
    bf16 = (a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
    _, grads = jax.jit(lambda a, b: vjp(ours, a, b))(*bf16)
    assert all(g.dtype == jnp.bfloat16 for g in grads)
    _, want = jax.jit(lambda a, b: vjp(xla, a, b))(*(v.astype(jnp.float32) for v in bf16))
    assert_grads_close(grads, want, 2e-2)


def test_conv_grads_selects_the_kernel_gradients():
  """`"auto"` makes every conv a custom VJP (`"xla"` none), whose CPU kernel gradient is
  tap-wise for the strided convs of 64 or more channels only."""

  def uses_custom_vjp(conv_grads):
    frames, kernel = jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 4, 4))
    f = lambda w: cpu_conv.conv_frames(frames, w, 2, conv_grads)
    x, kernel_t = jnp.zeros((1, 2, 2, 2, 4)), jnp.zeros((3, 4, 4))
    g = lambda k: cpu_conv.conv_pointwise(x, k, conv_grads)
    jaxprs = str(jax.make_jaxpr(f)(kernel)), str(jax.make_jaxpr(g)(kernel_t))
    return ["custom_vjp_call" in jaxpr for jaxpr in jaxprs]

  assert uses_custom_vjp("auto") == [True, True]
  assert uses_custom_vjp("xla") == [False, False]
  assert cpu_conv.uses_tapwise_kernel_grad((3, 3, 64, 64), 2)
  assert not cpu_conv.uses_tapwise_kernel_grad((3, 3, 64, 64), 1)
  assert not cpu_conv.uses_tapwise_kernel_grad((7, 7, 15, 64), 2)  # the stem


def test_other_platforms_keep_xla_convolutions():
  """Lowered for a GPU, the gradient holds XLA's convolutions and no tap-wise matmuls: the same
  convolution and dot ops as with `conv_grads="xla"`; lowered for the CPU it has fewer."""
  frames, kernel = jnp.zeros((2, 8, 8, 64)), jnp.zeros((3, 3, 64, 32))
  x, kernel_t = jnp.zeros((1, 3, 4, 4, 8)), jnp.zeros((3, 8, 8))

  def grad_fn(conv_grads):
    def loss(w, k):
      y = cpu_conv.conv_frames(frames, w, 2, conv_grads)
      return jnp.sum(y**2) + jnp.sum(cpu_conv.conv_pointwise(x, k, conv_grads) ** 2)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))

  def op_counts(conv_grads, platform):
    text = grad_fn(conv_grads).trace(kernel, kernel_t).lower(lowering_platforms=(platform,))
    text = text.as_text()
    return text.count("stablehlo.convolution"), text.count("stablehlo.dot_general")

  assert op_counts("auto", "cuda") == op_counts("xla", "cuda")
  assert op_counts("auto", "cpu")[0] < op_counts("xla", "cpu")[0]


def test_whole_model_gradient_equals_xla_convolutions():
  """The tiny I3D-NL's loss gradient with `conv_grads="auto"` equals XLA's (its res5 3x3 conv
  has 64 channels and stride 2, so every CPU gradient formulation is in it)."""
  clips = jax.random.normal(jax.random.key(2), (2, 4, 64, 32, 3))
  labels = jnp.array([0, 1])

  def loss_and_grad(conv_grads):
    model = create_model(
      "resnet3d50_nl",
      num_classes=3,
      rngs=nnx.Rngs(0),
      conv_grads=conv_grads,
      dropout_rate=0.0,
      **TINY,
    )

    def loss_fn(model):
      logits = model(clips)["logits"]
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels])

    return nnx.jit(nnx.value_and_grad(loss_fn))(model)

  (l0, g0), (l1, g1) = loss_and_grad("xla"), loss_and_grad("auto")
  np.testing.assert_array_equal(l0, l1)  # the same forward
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())
