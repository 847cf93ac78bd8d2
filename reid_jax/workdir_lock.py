"""One run per workdir: process 0 holds an exclusive lock on `<workdir>/.lock` for the run.

The lock is `fcntl.flock` on the open file, so the operating system releases it when the process
ends, however it ends (kill -9 included); the file names the holder (host, pid, start time, mode)
for the error a second run prints. A lock file left by a process that is gone is taken over
with a warning. `flock` is per host on some network file systems: runs on two hosts sharing a
workdir over such a file system are not kept apart.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time

from data_prep.errors import UserError

log = logging.getLogger("reid_jax")

LOCK_FILE = ".lock"


class WorkdirLocked(UserError, RuntimeError):
  """Another run holds the workdir; the message names it."""


class WorkdirLock:
  """Context manager holding the workdir's lock (see the module docstring)."""

  def __init__(self, workdir: str, mode: str = ""):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.mode = mode
    self._file = None

  def __enter__(self) -> WorkdirLock:
    os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
    f = open(self.path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "unknown"
      f.close()
      raise WorkdirLocked(
        f"{os.path.dirname(self.path)} is in use by another run ({holder}); wait for it to end "
        "or choose another --workdir"
      ) from None
    f.seek(0)
    previous = f.read().strip()
    if previous:
      log.warning("Taking over the lock of a run that is gone: %s", previous)
    f.seek(0)
    f.truncate()
    holder = dict(host=socket.gethostname(), pid=os.getpid(), mode=self.mode, since=time.ctime())
    f.write(json.dumps(holder))
    f.flush()
    self._file = f
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.seek(0)
      self._file.truncate()  # an empty file: released cleanly, nothing to take over
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None
