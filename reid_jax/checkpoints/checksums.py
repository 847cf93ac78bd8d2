"""Checksums of committed checkpoint steps: `<directory>/checksums/<step>.json` holds each file's
size and SHA-256, written by process 0 once Orbax has committed the step and checked before a
restore reads it. A damaged step is set aside as `<step>.damaged` (kept, never deleted)."""

from __future__ import annotations

import json
import os

from data_prep.files import atomic_write, file_sha256

FOLDER = "checksums"


def path(directory: str, step: int) -> str:
  return os.path.join(directory, FOLDER, f"{step}.json")


def _digests(folder: str) -> dict[str, dict]:
  """Per file under `folder` (relative path): its size and SHA-256."""
  return {
    os.path.relpath(os.path.join(root, name), folder): dict(
      bytes=os.path.getsize(os.path.join(root, name)),
      sha256=file_sha256(os.path.join(root, name)),
    )
    for root, _, names in os.walk(folder)
    for name in sorted(names)
  }


def record_missing(directory: str, steps) -> None:
  """Writes the checksums of `steps` (committed) that have none and removes those of steps that
  are gone (cheap when every step has its file)."""
  steps = set(steps)
  folder = os.path.join(directory, FOLDER)
  for name in os.listdir(folder) if os.path.isdir(folder) else []:
    if name.endswith(".json") and int(name.split(".")[0]) not in steps:  # a removed step's
      os.remove(os.path.join(folder, name))
  for step in steps:
    if not os.path.exists(path(directory, step)):
      with atomic_write(path(directory, step)) as f:
        json.dump(_digests(os.path.join(directory, str(step))), f)


def damage(directory: str, step: int) -> str | None:
  """What is wrong with the files of `step` against its checksums, or None (also for steps saved
  without checksums, which Orbax's own reading then checks)."""
  if not os.path.exists(path(directory, step)):
    return None
  with open(path(directory, step)) as f:
    expected = json.load(f)
  found = _digests(os.path.join(directory, str(step)))
  for name, record in expected.items():
    if name not in found:
      return f"{name} is missing"
    if found[name]["bytes"] != record["bytes"]:
      return f"{name} has {found[name]['bytes']} bytes, {record['bytes']} were saved"
    if found[name]["sha256"] != record["sha256"]:
      return f"{name} changed since it was saved (SHA-256)"
  return None


def set_aside(directory: str, step: int) -> str:
  """Renames the damaged `step` to `<step>.damaged`, its checksums inside; returns that path."""
  target = os.path.join(directory, f"{step}.damaged")
  os.rename(os.path.join(directory, str(step)), target)
  if os.path.exists(path(directory, step)):
    os.rename(path(directory, step), os.path.join(target, "checksums.json"))
  return target
