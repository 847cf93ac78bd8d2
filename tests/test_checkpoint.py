"""Checkpoints: the writer and the reader round-trip an nnx model + optimiser state; retention,
errors, SIGTERM, checksums and damage; the model part alone, and fine-tuning weights."""

import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from reid_jax.checkpoints import (
  CheckpointDamaged,
  CheckpointMismatch,
  CheckpointReader,
  CheckpointWriter,
  MissingCheckpoint,
)
from reid_jax.sharding import abstract_like


class _TinyNet(nnx.Module):
  def __init__(self, width, *, rngs):
    self.linear = nnx.Linear(3, width, rngs=rngs)
    self.norm = nnx.BatchNorm(width, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x):
    return self.dropout(self.norm(self.linear(x)))


def _train_state(seed, width=4, steps=1):
  """State after `steps` updates, so batch stats, moments and RNG counts are non-trivial."""
  model = _TinyNet(width, rngs=nnx.Rngs(seed, dropout=seed + 1))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(seed), (8, 3))
  for _ in range(steps):
    _train_step(model, optimizer, x)
  return nnx.state((model, optimizer))


@nnx.jit
def _train_step(model, optimizer, x):
  grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
  optimizer.update(model, grads)


@nnx.jit
def _forward(model, x):
  return model(x)


def _writer(directory, **kwargs):
  return CheckpointWriter(directory, **{"save_every_steps": 1, "handle_sigterm": False, **kwargs})


def _restore(directory, target, step=None, model_name=None):
  """`(state, meta)` of `step` (default the newest intact one), as a resumed run reads it."""
  with CheckpointReader(directory) as reader:
    step = reader.resolve(step)
    return reader.restore(step, target=target, model_name=model_name), reader.meta(step)


def _steps(directory):
  with CheckpointReader(directory) as reader:
    return reader.steps()


def _leaves(state):
  def as_numpy(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(x)

  return [as_numpy(x) for x in jax.tree.leaves(state)]


def _assert_states_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture
def sigterm_safety_net():
  """A harmless SIGTERM handler for the test's duration, so a stray signal cannot kill pytest."""
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
  safety = signal.getsignal(signal.SIGTERM)
  yield safety
  signal.signal(signal.SIGTERM, previous)


def test_round_trip_restores_state_and_meta(tmp_path):
  state = _train_state(seed=0, steps=2)
  meta = {"step": 2, "epoch": 0, "model": "tiny", "fingerprint": "abc"}
  ckpt = _writer(tmp_path, save_every_steps=2)
  assert ckpt.steps() == []
  assert not ckpt.maybe_save(1, state=state, meta=meta)
  assert ckpt.maybe_save(2, state=state, meta=meta)
  ckpt.close()

  assert _steps(tmp_path) == [2]
  fresh = _train_state(seed=7, steps=0)
  restored, restored_meta = _restore(tmp_path, abstract_like(fresh), model_name="tiny")
  assert restored_meta == meta
  _assert_states_equal(restored, state)

  # The restored state drives a model exactly like the saved one.
  model = _TinyNet(4, rngs=nnx.Rngs(7, dropout=8))
  nnx.update(model, restored[0])
  reference = _TinyNet(4, rngs=nnx.Rngs(0, dropout=1))
  nnx.update(reference, state[0])
  x = jnp.ones((5, 3))
  # Dropout is active: equal outputs also need the same RNG state.
  np.testing.assert_array_equal(_forward(model, x), _forward(reference, x))


def test_keep_last_and_restore_of_a_specific_step(tmp_path):
  ckpt = _writer(tmp_path, keep_last=2, async_save=False)
  states = {step: {"w": jnp.full((2, 3), float(step))} for step in range(1, 5)}
  for step, state in states.items():
    assert ckpt.maybe_save(step, state=state, meta={"step": step})
  assert ckpt.steps() == [3, 4]
  ckpt.close()
  abstract = abstract_like(states[1])
  restored, meta = _restore(tmp_path, abstract, step=3)
  assert meta == {"step": 3}
  np.testing.assert_array_equal(restored["w"], states[3]["w"])
  with pytest.raises(MissingCheckpoint, match=r"no checkpoint of step 1 .*\[3, 4\]"):
    _restore(tmp_path, abstract, step=1)


def test_force_saves_off_interval_once(tmp_path):
  ckpt = _writer(tmp_path, save_every_steps=10)
  state = {"w": jnp.zeros(3)}
  assert not ckpt.maybe_save(7, state=state, meta={})
  assert ckpt.maybe_save(7, state=state, meta={}, force=True)
  assert not ckpt.maybe_save(7, state=state, meta={}, force=True)
  ckpt.close()
  assert _steps(tmp_path) == [7]


def test_reading_a_folder_without_checkpoints_writes_nothing(tmp_path):
  with pytest.raises(MissingCheckpoint, match="no checkpoint in"):
    _restore(tmp_path / "nowhere", {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
  assert not (tmp_path / "nowhere").exists()
  (tmp_path / "empty").mkdir()
  with pytest.raises(MissingCheckpoint, match="no checkpoint in"):
    _restore(tmp_path / "empty", {"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
  assert list((tmp_path / "empty").iterdir()) == []


def test_restore_into_another_shape_names_key_and_shapes(tmp_path):
  ckpt = _writer(tmp_path, async_save=False)
  ckpt.maybe_save(1, state=_train_state(seed=0, width=4, steps=0), meta={"model": "tiny4"})
  ckpt.close()
  wider = abstract_like(_train_state(seed=0, width=5, steps=0))
  with pytest.raises(CheckpointMismatch) as error:
    _restore(tmp_path, wider)
  message = str(error.value)
  # The first leaf in tree order whose shape changed: nnx sorts keys, so linear/bias.
  assert "'0/linear/bias/value'" in message
  assert "saved shape (4,), current shape (5,)" in message
  assert "saved model 'tiny4'" in message

  with pytest.raises(ValueError, match="holds model 'tiny4', but the current model is 'tiny5'"):
    _restore(tmp_path, wider, model_name="tiny5")


def test_restore_into_another_structure_names_missing_key(tmp_path):
  ckpt = _writer(tmp_path, async_save=False)
  ckpt.maybe_save(1, state={"a": jnp.zeros(2)}, meta={})
  ckpt.close()
  target = {
    "a": jax.ShapeDtypeStruct((2,), jnp.float32),
    "b": jax.ShapeDtypeStruct((3,), jnp.float32),
  }
  with pytest.raises(ValueError, match=r"'b': saved shape absent, current shape \(3,\)"):
    _restore(tmp_path, target)


def test_restore_follows_target_sharding(tmp_path):
  devices = jax.devices()
  mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  row_sharded = jax.NamedSharding(mesh, jax.P("data"))
  replicated = jax.NamedSharding(mesh, jax.P())
  state = {"rows": jnp.arange(4.0 * len(devices) * 2).reshape(-1, 2), "scalar": jnp.ones(())}
  ckpt = _writer(tmp_path)
  ckpt.maybe_save(1, state=jax.device_put(state, replicated), meta={})
  ckpt.close()
  target = {
    "rows": jax.ShapeDtypeStruct(state["rows"].shape, jnp.float32, sharding=row_sharded),
    "scalar": jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated),
  }
  restored, _ = _restore(tmp_path, target)
  assert restored["rows"].sharding == row_sharded
  np.testing.assert_array_equal(restored["rows"], state["rows"])


def test_sigterm_saves_off_interval_and_requests_stop(tmp_path, sigterm_safety_net):
  ckpt = CheckpointWriter(tmp_path, save_every_steps=100)
  state = {"w": jnp.ones(2)}
  assert not ckpt.maybe_save(3, state=state, meta={})
  assert not ckpt.preemption_requested()

  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(0.05)  # the Python-level handler runs on the main thread at the next check
  assert ckpt.maybe_save(4, state=state, meta={"step": 4})
  assert ckpt.preemption_requested()
  ckpt.close()
  assert signal.getsignal(signal.SIGTERM) is sigterm_safety_net
  assert _steps(tmp_path) == [4]


def test_handle_sigterm_false_leaves_handler_alone(tmp_path, sigterm_safety_net):
  ckpt = _writer(tmp_path)
  assert signal.getsignal(signal.SIGTERM) is sigterm_safety_net
  ckpt.close()


def test_async_save_is_complete_after_close(tmp_path):
  # Large enough that the background write is still running when maybe_save returns.
  state = {"big": jnp.arange(2_000_000, dtype=jnp.float32)}
  ckpt = _writer(tmp_path, async_save=True)
  assert ckpt.maybe_save(1, state=state, meta={"step": 1})
  ckpt.close()
  # Committed, no temporary dir; its checksums written once committed.
  assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "checksums"]
  assert (tmp_path / "checksums" / "1.json").exists()
  restored, _ = _restore(tmp_path, abstract_like(state))
  np.testing.assert_array_equal(restored["big"], state["big"])


def _trained_reid_state(num_classes, stage_depths=(1, 1, 1, 1)):
  """A small ReIDNet and its Adam state, with every parameter and statistic moved off its
  initial value, as the trainer saves them."""
  from reid_jax.models import create_model

  model = create_model(
    "resnet3d50", num_classes=num_classes, rngs=nnx.Rngs(0), stage_depths=stage_depths, width=4
  )
  for _, variable in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
    variable.set_value(variable[...] + 0.5)
  return model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)


def test_the_model_part_is_read_alone(tmp_path):
  """The model of a (model, optimizer) state comes back without the optimiser's arrays."""
  source, optimizer = _trained_reid_state(num_classes=7)
  ckpt = _writer(tmp_path)
  ckpt.maybe_save(3, state=nnx.state((source, optimizer)), meta={"step": 3}, force=True)
  ckpt.close()
  target = abstract_like(nnx.state(source))
  with CheckpointReader(tmp_path) as reader:
    restored = reader.restore_part(3, "0", target=target)
    with pytest.raises(
      CheckpointMismatch, match="first mismatch at '0/head/classifier/bias/value'"
    ):
      reader.restore_part(
        3, "0", target=abstract_like(nnx.state(_trained_reid_state(num_classes=5)[0]))
      )
  _assert_states_equal(restored, nnx.state(source))


def test_finetuning_copies_all_but_the_classifier(tmp_path):
  from reid_jax.state import copy_checkpoint_weights

  source, optimizer = _trained_reid_state(num_classes=7)
  ckpt = _writer(tmp_path / "ckpt")
  ckpt.maybe_save(3, state=nnx.state((source, optimizer)), meta={"step": 3}, force=True)
  ckpt.close()

  target, _ = _trained_reid_state(num_classes=4)
  fresh_classifier = np.asarray(target.head.classifier.kernel[...]).copy()
  for _, variable in nnx.to_flat_state(nnx.state(target, nnx.Any(nnx.Param, nnx.BatchStat))):
    variable.set_value(jnp.zeros_like(variable[...]))
  target.head.classifier.kernel.set_value(jnp.asarray(fresh_classifier))
  copied = copy_checkpoint_weights(target, tmp_path / "ckpt")

  assert "conv1/kernel" in copied and "head/fc/kernel" in copied and "head/bn/mean" in copied
  assert not [k for k in copied if k.startswith("head/classifier")]
  for path, variable in nnx.to_flat_state(nnx.state(target, nnx.Any(nnx.Param, nnx.BatchStat))):
    key = "/".join(map(str, path))
    if key.startswith("head/classifier"):
      continue
    want = nnx.to_flat_state(nnx.state(source, nnx.Any(nnx.Param, nnx.BatchStat)))
    np.testing.assert_array_equal(variable[...], dict(want)[path][...], err_msg=key)
  np.testing.assert_array_equal(target.head.classifier.kernel[...], fresh_classifier)


def test_finetuning_from_another_architecture_names_the_variable_and_writes_nothing(tmp_path):
  from reid_jax.state import copy_checkpoint_weights

  source, optimizer = _trained_reid_state(num_classes=7)
  ckpt = _writer(tmp_path / "ckpt")
  ckpt.maybe_save(3, state=nnx.state((source, optimizer)), meta={"step": 3}, force=True)
  ckpt.close()
  # One more block in res5: the variables before it match, its own are missing.
  deeper, _ = _trained_reid_state(num_classes=7, stage_depths=(1, 1, 1, 2))
  before = _leaves(nnx.state(deeper))
  with pytest.raises(ValueError, match=r"no variable 'layer4/1/bn1/bias' in the checkpoint"):
    copy_checkpoint_weights(deeper, tmp_path / "ckpt")
  for a, b in zip(_leaves(nnx.state(deeper)), before):
    np.testing.assert_array_equal(a, b)

  other = _writer(tmp_path / "other")
  other.maybe_save(1, state={"weights": jnp.ones(3)}, meta={"step": 1}, force=True)
  other.close()
  with pytest.raises(ValueError, match="holds no model state"):
    copy_checkpoint_weights(deeper, tmp_path / "other")
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    copy_checkpoint_weights(deeper, tmp_path / "nowhere")


def _damage(folder, kind):
  state = folder / "state"
  files = sorted((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  if kind == "truncate the largest data file":
    path = files[-1]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  elif kind == "flip bytes in the largest data file":
    path = files[-1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
  else:  # delete a file by name
    path = next(p for p in folder.rglob(kind))
    path.unlink()
  return path


@pytest.mark.parametrize(
  "kind",
  [
    "truncate the largest data file",
    "flip bytes in the largest data file",
    "manifest.ocdbt",
    "_METADATA",
  ],
)
def test_a_damaged_checkpoint_is_named_and_the_one_before_restored(tmp_path, kind, caplog):
  states = {s: {"w": jnp.full((1000,), float(s))} for s in (1, 2)}
  ckpt = _writer(tmp_path)
  for step, state in states.items():
    ckpt.maybe_save(step, state=state, meta={"step": step})
  ckpt.close()
  damaged = _damage(tmp_path / "2", kind)
  with pytest.raises(CheckpointDamaged, match=rf"{tmp_path}/2 is damaged: .*{damaged.name}"):
    _restore(tmp_path, abstract_like(states[2]), step=2)
  with caplog.at_level("WARNING"):
    restored, meta = _restore(tmp_path, abstract_like(states[2]))
  assert meta["step"] == 1 and float(restored["w"][0]) == 1.0
  assert f"{tmp_path}/2 is damaged" in caplog.text and damaged.name in caplog.text
  assert (tmp_path / "2").exists()  # nothing is deleted


def test_a_damaged_step_is_set_aside_when_training_reaches_it_again(tmp_path):
  states = {s: {"w": jnp.full((1000,), float(s))} for s in (1, 2)}
  ckpt = _writer(tmp_path)
  for step, state in states.items():
    ckpt.maybe_save(step, state=state, meta={"step": step})
  ckpt.close()
  _damage(tmp_path / "2", "truncate the largest data file")
  with CheckpointReader(tmp_path) as reader:
    assert reader.resolve() == 1 and reader.damaged_steps == [2]
  resumed = _writer(tmp_path, damaged_steps=(2,))
  again = {"w": jnp.full((1000,), 22.0)}
  assert resumed.maybe_save(2, state=again, meta={"step": 2})
  resumed.close()
  assert (tmp_path / "2.damaged" / "checksums.json").exists()  # kept, not deleted
  restored, meta = _restore(tmp_path, abstract_like(again))
  assert meta["step"] == 2 and float(restored["w"][0]) == 22.0
  assert _steps(tmp_path) == [1, 2]


def test_an_intact_step_is_never_written_again(tmp_path):
  ckpt = _writer(tmp_path)
  ckpt.maybe_save(1, state={"w": jnp.ones(3)}, meta={"step": 1})
  ckpt.close()
  again = _writer(tmp_path)
  assert not again.maybe_save(1, state={"w": jnp.zeros(3)}, meta={"step": 1}, force=True)
  again.close()
  restored, _ = _restore(tmp_path, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
  np.testing.assert_array_equal(restored["w"], np.ones(3))
