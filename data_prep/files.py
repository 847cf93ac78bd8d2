"""Files written whole or not at all, and their checksums.

Every file a run leaves for a user (embeddings, features, metrics, thresholds, rankings, pictures,
export folders, checkpoint checksums) is written through `atomic_write` or `atomic_directory`:
the content goes to a hidden temporary name beside the target, `.<name>.tmp-<pid>`, and is renamed
onto it only once complete, so a reader never sees half a file and a failed or killed run leaves
the previous version (or nothing) behind. The temporary is removed when the writing fails. A
rename within one folder is atomic on POSIX file systems.

`file_sha256` is the one digest helper of the built datasets' shards and the checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import IO

from data_prep.errors import UserError


class UnwritableOutput(UserError, OSError):
  """A file cannot be written where it is asked for; the message names the path and why."""


def check_writable(path: str) -> None:
  """Raises UnwritableOutput unless a file can be written at `path` (its folder made if need
  be): checked before long work, by writing and removing a temporary file in the nearest
  folder that exists. Nothing is left behind."""
  path = os.path.abspath(path)
  if os.path.isdir(path):
    raise UnwritableOutput(f"{path} is a folder: give a file name")
  parent = os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UnwritableOutput(f"{path} cannot be written: {parent} is a file, not a folder")
  try:
    with tempfile.TemporaryFile(dir=parent):
      pass
  except OSError as e:
    raise UnwritableOutput(f"{path} cannot be written in {parent} ({e.strerror})") from None


def temporary_name(path: str) -> str:
  """`<folder>/.<name>.tmp-<pid>`: where `path` is written before it is renamed into place."""
  folder, name = os.path.split(os.path.abspath(path))
  return os.path.join(folder, f".{name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
  """Opens a temporary file for writing (`mode` "w" or "wb"), renamed to `path` when the block
  ends without an error and removed when it raises. The folder is created if needed."""
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_write writes new files: mode 'w' or 'wb', got {mode!r}")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = temporary_name(path)
  try:
    with open(tmp, mode, **({"newline": ""} if mode == "w" else {})) as f:
      yield f
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
  """Yields a temporary folder to fill; it becomes `path` when the block ends without an error
  and is removed when it raises. `path` must not exist (a folder cannot be replaced atomically)."""
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists")
  tmp = temporary_name(path)
  if os.path.exists(tmp):  # left by a killed process that had this pid
    shutil.rmtree(tmp)
  os.makedirs(tmp)
  try:
    yield tmp
    os.rename(tmp, path)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)


def file_sha256(path: str) -> str:
  """The SHA-256 of a file's bytes, as hex."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 22):
      digest.update(chunk)
  return digest.hexdigest()
