"""Reading checkpoints: which steps there are, their metadata and damage, and restores.

A reader writes nothing (it never creates the directory) and needs no optimiser: `restore_part`
reads one part of the saved state, e.g. the model (`"0"`) for inference or fine-tuning, without
the Adam moments beside it. Every process must make the same calls (Orbax coordinates them).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from data_prep.errors import UserError
from reid_jax.checkpoints import checksums

PyTree = Any
log = logging.getLogger("reid_jax")


class MissingCheckpoint(UserError, FileNotFoundError):
  """No checkpoint, or not the step asked for; the message names the folder and the steps there."""


class CheckpointDamaged(UserError, RuntimeError):
  """A checkpoint's files do not match what was saved; the message names the file."""


class CheckpointMismatch(UserError, ValueError):
  """A checkpoint does not hold what the target expects (another model, another shape)."""


def _path_str(path) -> str:
  return jax.tree_util.keystr(path, simple=True, separator="/")


def _shapes(tree) -> dict[str, tuple[int, ...] | None]:
  def stored_shape(leaf):
    # Typed PRNG keys are stored as their raw key data, which has extra trailing dims.
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
      return jax.eval_shape(jax.random.key_data, leaf).shape
    shape = getattr(leaf, "shape", None)
    return None if shape is None else tuple(shape)

  return {
    _path_str(p): stored_shape(leaf) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def absolute(directory: str | os.PathLike) -> str:
  directory = str(directory)
  return directory if "://" in directory else os.path.abspath(directory)


class CheckpointReader:
  """The checkpoints under one directory (`<workdir>/checkpoints`), read-only.

  Usable as a context manager; `close()` releases Orbax's resources.
  """

  def __init__(self, directory: str | os.PathLike):
    self.directory = absolute(directory)
    self.damaged_steps: list[int] = []  # found damaged by `resolve`, newest first
    self._manager = None
    if os.path.isdir(self.directory) or "://" in self.directory:
      registry = ocp.handlers.create_default_handler_registry(
        state=ocp.PyTreeCheckpointHandler(), meta=ocp.JsonCheckpointHandler()
      )
      self._manager = ocp.CheckpointManager(
        self.directory,
        handler_registry=registry,
        options=ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False),
      )

  def __enter__(self) -> CheckpointReader:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    if self._manager is not None:
      self._manager.close()
      self._manager = None

  def steps(self) -> list[int]:
    """Every saved step, oldest first (none when the directory does not exist)."""
    return sorted(self._manager.all_steps()) if self._manager is not None else []

  def damage(self, step: int) -> str | None:
    """What is wrong with `step`'s files against its checksums, or None."""
    return checksums.damage(self.directory, step)

  def resolve(self, step: int | None = None, *, field: str = "") -> int:
    """`step` checked to exist and be intact, or (None) the newest intact step, warning about
    each newer damaged one (they are listed in `damaged_steps`).

    Raises:
      MissingCheckpoint: no checkpoint at all, or none at `step` (naming `field`, the setting
        that asked for it, and the steps there).
      CheckpointDamaged: `step` is damaged, or every step is.
    """
    steps = self.steps()
    if not steps:
      raise MissingCheckpoint(f"no checkpoint in {self.directory}")
    if step is not None:
      if step not in steps:
        where = f"{field}: " if field else ""
        raise MissingCheckpoint(
          f"{where}no checkpoint of step {step} in {self.directory} (there are {steps})"
        )
      if problem := self.damage(step):
        raise CheckpointDamaged(f"Checkpoint {self.directory}/{step} is damaged: {problem}.")
      return step
    for candidate in reversed(steps):
      problem = self.damage(candidate)
      if problem is None:
        return candidate
      log.warning(
        "Checkpoint %s/%d is damaged (%s); trying the one before.",
        self.directory,
        candidate,
        problem,
      )
      self.damaged_steps.append(candidate)
    raise CheckpointDamaged(f"Every checkpoint in {self.directory} is damaged.")

  def _read(self, step: int, **items):
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # unreadable without checksums to say more
      raise CheckpointDamaged(
        f"Checkpoint {self.directory}/{step} cannot be read ({type(e).__name__}: {e})"
      ) from None

  def meta(self, step: int) -> dict[str, Any]:
    """The metadata saved with `step`."""
    return self._read(step, meta=ocp.args.JsonRestore())["meta"]

  def saved_shapes(self, step: int) -> dict[str, tuple[int, ...] | None]:
    """`'0/head/classifier/kernel/value' -> shape` of every array saved in `step`'s state."""
    return _shapes(self._manager.item_metadata(step)["state"])

  def _check_fits(
    self, step: int, target: PyTree, prefix: str, model: str | None, exact: bool = True
  ) -> None:
    """Raises CheckpointMismatch naming the first key whose presence or shape differs (with
    `exact=False`, only among the target's keys)."""
    saved = {k: v for k, v in self.saved_shapes(step).items() if k.startswith(prefix)}
    wanted = {prefix + k: v for k, v in _shapes(target).items()}
    absent = "absent"
    extra = [k for k in saved if k not in wanted] if exact else []
    for key in [*wanted, *extra]:
      if saved.get(key, absent) != wanted.get(key, absent):
        raise CheckpointMismatch(
          f"Checkpoint {self.directory}/{step} does not fit the current state: first "
          f"mismatch at {key!r}: saved shape {saved.get(key, absent)}, current shape "
          f"{wanted.get(key, absent)} (saved model {model!r})"
        )

  def _check_model(self, step: int, model_name: str | None) -> str | None:
    saved_model = self.meta(step).get("model")
    if model_name is not None and saved_model is not None and saved_model != model_name:
      raise CheckpointMismatch(
        f"Checkpoint {self.directory}/{step} holds model {saved_model!r}, but the current "
        f"model is {model_name!r}."
      )
    return saved_model

  def restore(self, step: int, *, target: PyTree, model_name: str | None = None) -> PyTree:
    """The whole saved state of `step` laid out as `target`: a tree of `jax.ShapeDtypeStruct`
    (or arrays) carrying the target shardings, in its dtypes. The tree and its shapes are
    checked first (CheckpointMismatch names the first difference)."""
    saved_model = self._check_model(step, model_name)
    self._check_fits(step, target, "", saved_model)
    args = ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
    )
    return self._read(step, state=args)["state"]

  def restore_part(
    self,
    step: int,
    part: str,
    *,
    target: PyTree,
    model_name: str | None = None,
    exact: bool = True,
  ) -> PyTree:
    """Only `state[part]` of `step` (e.g. `"0"`, the model of an (model, optimizer) state),
    laid out as `target`; nothing else is read. With `exact=False` the target may hold only
    some of the part's arrays."""
    saved_model = self._check_model(step, model_name)
    self._check_fits(step, target, f"{part}/", saved_model, exact)
    args = ocp.args.PyTreeRestore(
      item={part: target},
      restore_args={part: ocp.checkpoint_utils.construct_restore_args(target)},
      partial_restore=True,
    )
    return self._read(step, state=args)["state"][part]


def latest_meta(directory: str | os.PathLike) -> dict[str, Any] | None:
  """The metadata of the newest step under `directory`, or None when there is none."""
  with CheckpointReader(directory) as reader:
    steps = reader.steps()
    return reader.meta(steps[-1]) if steps else None
