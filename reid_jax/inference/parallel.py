"""Work beside the main thread, in order or as it comes, with bounded memory.

- `interleave` runs several readers (callables returning iterators: a video's decoding pass, a
  run of tracklet folders) in threads, at most `workers` at once, and yields their items as they
  come: the chunk stream takes chunks in any order.
- `prefetch` runs one iterator in a thread, `size` items ahead: the next batch is assembled while
  the device computes the current one.

Both hold at most a few items in their queues, and pass on the first exception a thread raises.
When the consumer stops early, the threads stop at their next item.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures

_DONE = object()


class _Failed:
  def __init__(self, error: BaseException):
    self.error = error


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
  """Puts `item` unless the consumer has stopped; whether it did."""
  while not stop.is_set():
    try:
      q.put(item, timeout=0.1)
      return True
    except queue.Full:
      continue
  return False


def _produce(reader: Callable[[], Iterable], out: queue.Queue, stop: threading.Event) -> None:
  """Puts every item of `reader()` into `out`, then _DONE (after a _Failed if it raised); stops
  early when the consumer has."""
  try:
    for item in reader():
      if not _put(out, item, stop):
        return
  except BaseException as e:  # passed on to the consumer
    _put(out, _Failed(e), stop)
  finally:
    _put(out, _DONE, stop)


def interleave(readers: list[Callable[[], Iterable]], *, workers: int) -> Iterator:
  """The items of every reader's iterator, as they come (one reader runs in this thread)."""
  if len(readers) <= 1:
    for reader in readers:
      yield from reader()
    return
  items: queue.Queue = queue.Queue(maxsize=2 * workers)
  stop = threading.Event()
  pool = futures.ThreadPoolExecutor(max_workers=min(workers, len(readers)))
  try:
    for reader in readers:
      pool.submit(_produce, reader, items, stop)
    remaining = len(readers)
    while remaining:
      item = items.get()
      if item is _DONE:
        remaining -= 1
      elif isinstance(item, _Failed):
        raise item.error
      else:
        yield item
  finally:
    stop.set()
    pool.shutdown(wait=True, cancel_futures=True)


def prefetch(iterator: Iterable, size: int = 2) -> Iterator:
  """The items of `iterator`, produced in a thread up to `size` ahead."""
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  thread = threading.Thread(target=_produce, args=(lambda: iterator, items, stop), daemon=True)
  thread.start()
  try:
    while True:
      item = items.get()
      if item is _DONE:
        return
      if isinstance(item, _Failed):
        raise item.error
      yield item
  finally:
    stop.set()
    thread.join()
