"""Checkpoints of the training state with Orbax: periodic, on preemption, and at the end.

A checkpoint step holds two items: `state`, any pytree of arrays (in practice an `nnx.State` with
parameters, BatchNorm statistics, optimiser state and RNG keys), and `meta`, a small JSON dict
(step, epoch, input position, model name, config fingerprint...). All processes must call every
method: Orbax coordinates them and writes each array shard once.

Preemption: in a single process a SIGTERM handler sets a flag, and the next `maybe_save` writes a
checkpoint and reports it through `preemption_requested()`. With several processes, SIGTERM
reaches them at different steps, so the decision must be collective: JAX's preemption sync
manager (started by `jax.distributed.initialize`) agrees on a step and Orbax's
`reached_preemption` reports it; our handler is then not installed, since it would replace JAX's.
"""

import json
import logging
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from data_prep import built

PyTree = Any


def _path_str(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator="/")


def _saved_shapes(tree_metadata) -> dict[str, tuple[int, ...] | None]:
  return {
    _path_str(path): getattr(leaf, "shape", None)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree_metadata)[0]
  }


def _target_shapes(abstract_state: PyTree) -> dict[str, tuple[int, ...] | None]:
  def stored_shape(leaf):
    # Typed PRNG keys are stored as their raw key data, which has extra trailing dims.
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
      return jax.eval_shape(jax.random.key_data, leaf).shape
    return getattr(leaf, "shape", None)

  return {
    _path_str(path): stored_shape(leaf)
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]
  }


class Checkpointer:
  """Saves and restores `(state, meta)` under one directory, one subdirectory per step.

  Typical use in a train loop (every process runs the same calls)::

      ckpt = Checkpointer(workdir / 'checkpoints', save_every_steps=1000)
      if ckpt.latest_step() is not None:
          state, meta = ckpt.restore(abstract_state=abstract, model_name=name)
      for step in range(start, total_steps):
          ...
          ckpt.maybe_save(step + 1, state=state, meta=meta)
          if ckpt.preemption_requested():
              break
      else:
          ckpt.maybe_save(total_steps, state=state, meta=meta, force=True)
      ckpt.close()
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    save_every_steps: int,
    keep_last: int = 3,
    async_save: bool = True,
    handle_sigterm: bool = True,
  ):
    """Opens (creating if needed) the checkpoint directory.

    Args:
        directory: where step subdirectories are written; local paths are made absolute.
        save_every_steps: `maybe_save` writes at steps that are multiples of this.
        keep_last: how many of the most recent checkpoints to keep.
        async_save: write in a background thread once the arrays are copied to the host,
            so training goes on during the write.
        handle_sigterm: in a single process, catch SIGTERM (from the main thread only) to
            save and stop; the previous handler comes back on `close()`.
    """
    if save_every_steps < 1:
      raise ValueError(f"save_every_steps must be >= 1, got {save_every_steps}.")
    if keep_last < 1:
      raise ValueError(f"keep_last must be >= 1, got {keep_last}.")
    self.directory = epath.Path(_absolute(directory))
    # Preemption is decided in `maybe_save` rather than by Orbax's
    # PreemptionCheckpointingPolicy, because the loop must also learn of it to stop.
    options = ocp.CheckpointManagerOptions(
      save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(save_every_steps),
      preservation_policy=ocp.checkpoint_managers.LatestN(keep_last),
      enable_async_checkpointing=async_save,
    )
    registry = ocp.handlers.create_default_handler_registry(
      state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler()
    )
    self._manager = ocp.CheckpointManager(
      self.directory, options=options, handler_registry=registry
    )
    self._sigterm = threading.Event()
    self._damaged: set[int] = set()  # steps found damaged by `restore`, set aside when re-saved
    # Steps of this directory may lack checksums (saved by this object, or by a run killed
    # before writing them): look once, then only after a save.
    self._checksums_due = True
    self._preempted = False
    self._handles_sigterm = False
    if handle_sigterm and jax.process_count() == 1:
      if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        # None means a handler installed outside Python, which cannot be reinstalled.
        self._previous_sigterm_handler = signal.SIG_DFL if previous is None else previous
        self._handles_sigterm = True
      else:
        logging.warning("Not on the main thread: SIGTERM will not trigger a checkpoint.")

  def _on_sigterm(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the next step, then stopping.")
    self._sigterm.set()

  # -------------------------------------------------------------------------------------------
  # Checksums: `<directory>/checksums/<step>.json` holds each file's size and SHA-256, written
  # by process 0 once Orbax has committed the step, and checked before a restore reads it.

  def _checksum_path(self, step: int) -> str:
    return os.path.join(self.directory, "checksums", f"{step}.json")

  def _record_checksums(self) -> None:
    """Writes the checksums of committed steps that have none (cheap when all have one)."""
    if not self._checksums_due or jax.process_index() != 0:
      return
    if self._manager.is_saving_in_progress():
      return
    steps = set(self._manager.all_steps())
    folder = os.path.join(self.directory, "checksums")
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
      if name.endswith(".json") and int(name.split(".")[0]) not in steps:  # a removed step's
        os.remove(os.path.join(folder, name))
    for step in steps:
      path = self._checksum_path(step)
      if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
          json.dump(_file_digests(os.path.join(self.directory, str(step))), f)
        os.replace(path + ".tmp", path)
    self._checksums_due = False

  def damage(self, step: int) -> str | None:
    """What is wrong with the files of `step` against its checksums, or None (also for steps
    saved without checksums, which Orbax's own reading then checks)."""
    path = self._checksum_path(step)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      expected = json.load(f)
    found = _file_digests(os.path.join(self.directory, str(step)))
    for name, record in expected.items():
      if name not in found:
        return f"{name} is missing"
      if found[name]["bytes"] != record["bytes"]:
        return f"{name} has {found[name]['bytes']} bytes, {record['bytes']} were saved"
      if found[name]["sha256"] != record["sha256"]:
        return f"{name} changed since it was saved (SHA-256)"
    return None

  def _set_aside(self, step: int) -> None:
    """Renames a damaged step to `<step>.damaged` (kept, not deleted) so it can be saved again."""
    if jax.process_index() == 0:
      target = os.path.join(self.directory, f"{step}.damaged")
      os.rename(os.path.join(self.directory, str(step)), target)
      if os.path.exists(self._checksum_path(step)):
        os.rename(self._checksum_path(step), os.path.join(target, "checksums.json"))
      logging.warning(
        "Moved damaged checkpoint %s/%d to %s; saving it again.", self.directory, step, target
      )
    self._manager.reload()
    self._damaged.discard(step)

  def maybe_save(
    self, step: int, *, state: PyTree, meta: dict[str, Any], force: bool = False
  ) -> bool:
    """Saves `state` and `meta` as `step` when it is due; returns whether it saved.

    Due means: `step` is a multiple of `save_every_steps`, a preemption was signalled (see the
    module docstring), or `force` (use at the end of training). A step that already has a
    checkpoint is not written again. Call it after every train step with the state reached
    by that step, from every process. With `async_save` the call returns once the arrays are
    on the host, so their device buffers may be donated right after.
    """
    self._record_checksums()
    preempted = self._sigterm.is_set() or self._manager.reached_preemption(step)
    if preempted:
      self._preempted = True
    if step in self._damaged and step in self._manager.all_steps():
      self._set_aside(step)
    if step in self._manager.all_steps():
      return False
    if not (force or preempted or self._manager.should_save(step)):
      return False
    self._checksums_due = True
    return self._manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True,
    )

  def preemption_requested(self) -> bool:
    """True once a preemption was signalled and `maybe_save` has saved for it: stop training."""
    return self._preempted

  def latest_step(self) -> int | None:
    """The newest saved step, or None when the directory holds no checkpoint."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every saved step, oldest first."""
    return sorted(self._manager.all_steps())

  def restore(
    self,
    step: int | None = None,
    *,
    abstract_state: PyTree,
    model_name: str | None = None,
  ) -> tuple[PyTree, dict[str, Any]]:
    """Restores `(state, meta)` of `step` (default: the latest) into `abstract_state`.

    `abstract_state` has the structure of the saved state with `jax.ShapeDtypeStruct` leaves
    (or live arrays) carrying the target shardings, e.g.
    `jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
    state)`; arrays come back laid out that way (on the default device where a leaf has no
    sharding), in its dtypes. Only shapes are checked: a dtype change is a cast.

    Raises:
        FileNotFoundError: no checkpoint at all, or none at `step`.
        ValueError: the checkpoint was written for another model (`meta['model']` differs
            from `model_name`) or its tree of arrays differs from `abstract_state`; the
            message names the first mismatching key with both shapes.
    """
    if step is None:
      steps = self.all_steps()
      if not steps:
        raise FileNotFoundError(f"No checkpoint in {self.directory}.")
      for step in reversed(steps):  # the newest intact one
        problem = self.damage(step)
        if problem is None:
          break
        logging.warning(
          "Checkpoint %s/%d is damaged (%s); trying the one before.", self.directory, step, problem
        )
        self._damaged.add(step)
      else:
        raise CheckpointDamaged(f"Every checkpoint in {self.directory} is damaged.")
    elif step not in self._manager.all_steps():
      raise FileNotFoundError(
        f"No checkpoint for step {step} in {self.directory}; saved steps: {self.all_steps()}."
      )
    elif problem := self.damage(step):
      raise CheckpointDamaged(f"Checkpoint {self.directory}/{step} is damaged: {problem}.")
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # unreadable without checksums to say more
      raise CheckpointDamaged(
        f"Checkpoint {self.directory}/{step} cannot be read ({type(e).__name__}: {e})"
      ) from None
    meta = restored["meta"]
    saved_model = meta.get("model")
    if model_name is not None and saved_model is not None and saved_model != model_name:
      raise ValueError(
        f"Checkpoint {self.directory}/{step} holds model {saved_model!r}, but the current "
        f"model is {model_name!r}."
      )
    self._check_fits(step, abstract_state, saved_model, model_name)
    try:
      state = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
      )["state"]
    except Exception as e:  # unreadable without checksums to say more
      raise CheckpointDamaged(
        f"Checkpoint {self.directory}/{step} cannot be read ({type(e).__name__}: {e})"
      ) from None
    return state, meta

  def _check_fits(self, step, abstract_state, saved_model, model_name):
    """Raises ValueError naming the first key whose presence or shape differs."""
    saved = _saved_shapes(self._manager.item_metadata(step)["state"])
    target = _target_shapes(abstract_state)
    absent = "absent"
    for key in [*target, *(k for k in saved if k not in target)]:
      saved_shape, target_shape = saved.get(key, absent), target.get(key, absent)
      if saved_shape != target_shape:
        raise ValueError(
          f"Checkpoint {self.directory}/{step} does not fit the current state: first "
          f"mismatch at {key!r}: saved shape {saved_shape}, current shape "
          f"{target_shape} (saved model {saved_model!r}, current model "
          f"{model_name!r})."
        )

  def wait_until_finished(self) -> None:
    """Blocks until every asynchronous save has been committed to disk (and checksummed)."""
    self._manager.wait_until_finished()
    self._record_checksums()

  def close(self) -> None:
    """Finishes pending saves, releases Orbax resources and restores the SIGTERM handler."""
    self._manager.wait_until_finished()
    self._record_checksums()
    self._manager.close()
    if self._handles_sigterm:
      signal.signal(signal.SIGTERM, self._previous_sigterm_handler)
      self._handles_sigterm = False


class CheckpointDamaged(RuntimeError):
  """A checkpoint's files do not match what was saved; the message names the file."""


def _file_digests(folder: str) -> dict[str, dict]:
  """Per file under `folder` (relative path): its size and SHA-256."""
  return {
    os.path.relpath(os.path.join(root, name), folder): dict(
      bytes=os.path.getsize(os.path.join(root, name)),
      sha256=built.file_sha256(os.path.join(root, name)),
    )
    for root, _, names in os.walk(folder)
    for name in sorted(names)
  }


def _restore_latest(directory: str, **items) -> tuple[int, dict[str, Any]] | None:
  """The newest step under `directory` and its `items` (name -> Orbax restore args), read
  without writing anything; None when there is no checkpoint."""
  if not epath.Path(directory).exists():
    return None
  with ocp.CheckpointManager(
    directory,
    item_names=("state", "meta"),
    options=ocp.CheckpointManagerOptions(read_only=True),
  ) as manager:
    step = manager.latest_step()
    if step is None:
      return None
    return step, manager.restore(step, args=ocp.args.Composite(**items))


def _absolute(directory: str | os.PathLike) -> str:
  directory = str(directory)
  return directory if "://" in directory else os.path.abspath(directory)


def latest_meta(directory: str | os.PathLike) -> dict[str, Any] | None:
  """The `meta` of the newest checkpoint under `directory`, or None when there is none."""
  latest = _restore_latest(_absolute(directory), meta=ocp.args.JsonRestore())
  return None if latest is None else latest[1]["meta"]


def load_params_for_finetuning(
  model, directory: str | os.PathLike, *, skip: tuple[str, ...] = ("head", "classifier")
) -> list[str]:
  """Copies weights and BatchNorm statistics from the latest checkpoint in `directory` into
  `model` (in place), all but the variables under the path `skip`: by default the identity
  classifier, whose size is the source dataset's number of identities. The bottleneck (the
  head's fc and BatchNorm) computes the retrieval feature and is copied.

  The checkpoint's optimiser state, step and RNG are not used: fine-tuning starts afresh.
  Every variable is checked before any is written. Returns the paths copied.

  Raises:
      FileNotFoundError: no checkpoint in `directory`.
      ValueError: the checkpoint was not written by this trainer, or a variable of `model` is
          missing from it or has another shape (the message names it).
  """
  from flax import nnx  # deferred: the rest of this module is framework-agnostic

  directory = _absolute(directory)
  latest = _restore_latest(directory, state=ocp.args.StandardRestore())
  if latest is None:
    raise FileNotFoundError(f"No checkpoint in {directory} to fine-tune from.")
  step, saved = latest
  # The trainer saves nnx.state((model, optimizer)): the model's variables sit under '0', each
  # stored as its value.
  if "0" not in saved["state"]:
    raise ValueError(f"{directory}/{step} holds no model state ('0'): not written by this trainer")
  flat_saved = {
    _path_str(path): leaf
    for path, leaf in jax.tree_util.tree_flatten_with_path(saved["state"]["0"])[0]
  }
  updates = []
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
    if tuple(str(p) for p in path[: len(skip)]) == tuple(skip):
      continue
    key = "/".join(str(p) for p in path)
    value = flat_saved.get(f"{key}/value")
    if value is None:
      raise ValueError(
        f"{directory}/{step}: no variable {key!r} in the checkpoint; is it of another architecture?"
      )
    if tuple(value.shape) != tuple(variable.shape):
      raise ValueError(
        f"{directory}/{step}: {key!r} has shape {tuple(value.shape)}, the "
        f"model expects {tuple(variable.shape)}"
      )
    updates.append((key, variable, value))
  for _, variable, value in updates:
    variable.set_value(jax.numpy.asarray(value, variable[...].dtype))
  return [key for key, _, _ in updates]
