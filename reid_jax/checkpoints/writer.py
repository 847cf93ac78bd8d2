"""Saving the training state: periodic saves, a save on preemption, and the final one.

Every process must call every method: Orbax coordinates them and writes each array shard once.

Preemption: in a single process a SIGTERM handler sets a flag, and the next `maybe_save` writes a
checkpoint and reports it through `preemption_requested()`. With several processes, SIGTERM
reaches them at different steps, so the decision must be collective: JAX's preemption sync
manager (started by `jax.distributed.initialize`) agrees on a step and Orbax's
`reached_preemption` reports it; our handler is then not installed, since it would replace JAX's.

Once Orbax has committed a step, process 0 records its checksums (`checksums`). A step that
already exists is not written again, unless the reader that resumed the run found it damaged
(`damaged_steps`): then it is set aside as `<step>.damaged` and saved anew when the run reaches it
again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

from reid_jax.checkpoints import checksums
from reid_jax.checkpoints.reader import absolute

PyTree = Any
log = logging.getLogger("reid_jax")


class CheckpointWriter:
  """Saves `(state, meta)` under one directory, one subdirectory per step.

  Typical use in a train loop (every process runs the same calls)::

      writer = CheckpointWriter(workdir / "checkpoints", save_every_steps=1000)
      for step in range(start, total_steps):
          ...
          writer.maybe_save(step + 1, state=state, meta=meta)
          if writer.preemption_requested():
              break
      else:
          writer.maybe_save(total_steps, state=state, meta=meta, force=True)
      writer.close()
  """

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    save_every_steps: int,
    keep_last: int = 3,
    async_save: bool = True,
    handle_sigterm: bool = True,
    damaged_steps: tuple[int, ...] = (),
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
        damaged_steps: steps found damaged (`CheckpointReader.damaged_steps`), to save anew.
    """
    if save_every_steps < 1:
      raise ValueError(f"save_every_steps must be >= 1, got {save_every_steps}.")
    if keep_last < 1:
      raise ValueError(f"keep_last must be >= 1, got {keep_last}.")
    self.directory = absolute(directory)
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
    self._damaged = set(damaged_steps)
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
        log.warning("Not on the main thread: SIGTERM will not trigger a checkpoint.")

  def _on_sigterm(self, signum, frame):
    del signum, frame
    log.warning("SIGTERM received: saving a checkpoint at the next step, then stopping.")
    self._sigterm.set()

  def _record_checksums(self) -> None:
    """Process 0 writes the checksums of committed steps that have none."""
    if not self._checksums_due or jax.process_index() != 0:
      return
    if self._manager.is_saving_in_progress():
      return
    checksums.record_missing(self.directory, self._manager.all_steps())
    self._checksums_due = False

  def _set_aside_if_damaged(self, step: int) -> bool:
    """Sets an existing damaged `step` aside (so it can be saved again); whether it did."""
    if step not in self._damaged:
      return False
    self._damaged.discard(step)
    if jax.process_index() == 0:
      target = checksums.set_aside(self.directory, step)
      log.warning(
        "Moved damaged checkpoint %s/%d to %s; saving it again.", self.directory, step, target
      )
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self._manager.reload()
    return True

  def maybe_save(
    self, step: int, *, state: PyTree, meta: dict[str, Any], force: bool = False
  ) -> bool:
    """Saves `state` and `meta` as `step` when it is due; returns whether it saved.

    Due means: `step` is a multiple of `save_every_steps`, a preemption was signalled (see the
    module docstring), or `force` (use at the end of training). A step that already has an
    intact checkpoint is not written again. Call it after every train step with the state
    reached by that step, from every process. With `async_save` the call returns once the
    arrays are on the host, so their device buffers may be donated right after.
    """
    self._record_checksums()
    preempted = self._sigterm.is_set() or self._manager.reached_preemption(step)
    if preempted:
      self._preempted = True
    if step in self._manager.all_steps() and not self._set_aside_if_damaged(step):
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

  def steps(self) -> list[int]:
    """Every saved step, oldest first."""
    return sorted(self._manager.all_steps())

  def wait_until_finished(self) -> None:
    """Blocks until every asynchronous save has been committed to disk (and checksummed)."""
    self._manager.wait_until_finished()
    self._record_checksums()

  def close(self) -> None:
    """Finishes pending saves, releases Orbax resources and restores the SIGTERM handler."""
    self.wait_until_finished()
    self._manager.close()
    if self._handles_sigterm:
      signal.signal(signal.SIGTERM, self._previous_sigterm_handler)
      self._handles_sigterm = False
