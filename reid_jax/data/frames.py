"""Frames as the model sees them: the one image decoder and the one resize.

Every frame that reaches the network, the report's pictures or a ranked sheet passes through
here. Encoded images (the JPEGs of a built dataset's shards, the jpg/png files of a user's
tracklet folders) are decoded by `decode_frame`; frames of any origin (decoded video frames, box
crops) are resized by `resize_frame` (bilinear, rounded to uint8; a frame already of the size is
passed through). `decode_chunks` runs the same two functions in tf.data's thread pool, outside
the GIL, over many T-frame chunks at once; the training pipeline's random crops decode only the
crop window (`reid_jax.data.pipeline`) and resize with `resize_frame` too.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow as tf

# tf.data only decodes images here; keep TensorFlow off any GPU so that JAX owns its memory.
try:
  tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TensorFlow already initialised by the caller: its devices are its choice
  pass


class UndecodableFrame(ValueError):
  """An encoded frame that does not decode; `chunk` and `slot` say which (see `decode_chunks`)."""

  def __init__(self, chunk: int, slot: int, reason: str):
    super().__init__(f"chunk {chunk} frame {slot}: {reason}")
    self.chunk, self.slot, self.reason = chunk, slot, reason


def resize_frame(image, height: int, width: int) -> tf.Tensor:
  """Bilinear resize to uint8 `height x width`; frames already that size are passed through."""
  shape = tf.shape(image)

  def resize():
    # Bilinear output lies within the input range, so +0.5 and truncation round it.
    return tf.cast(tf.image.resize(image, [height, width]) + 0.5, tf.uint8)

  return tf.cond((shape[0] == height) & (shape[1] == width), lambda: image, resize)


@functools.cache
def _crops_program(height: int, width: int):
  def crops(image, boxes):
    return tf.map_fn(
      lambda b: resize_frame(image[b[0] : b[2], b[1] : b[3]], height, width),
      boxes,
      fn_output_signature=tf.TensorSpec([height, width, 3], tf.uint8),
    )

  return tf.function(
    crops,
    input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([None, 4], tf.int32)],
    autograph=False,
  )


def crops_of(image: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 `[k, height, width, 3]`: the windows `boxes` (int `[k, 4]`: top, left, bottom, right
  in pixels) of one frame, each resized by `resize_frame`, in one call (the per-box work stays in
  TensorFlow's C++, not in Python)."""
  return _crops_program(height, width)(image, np.asarray(boxes, np.int32)).numpy()


def decode_frame(encoded, height: int | None = None, width: int | None = None) -> tf.Tensor:
  """Encoded image bytes (JPEG, PNG, BMP, GIF's first frame) -> uint8 RGB `[H, W, 3]`, resized
  to `height x width` when given."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  return image if height is None else resize_frame(image, height, width)


def _first_undecodable(chunk_ids: np.ndarray, encoded: np.ndarray) -> UndecodableFrame:
  for chunk, frames in zip(chunk_ids, encoded):
    for slot, data in enumerate(frames):
      try:
        decode_frame(bytes(data))
      except (tf.errors.OpError, ValueError) as e:
        return UndecodableFrame(int(chunk), slot, e.message if hasattr(e, "message") else str(e))
  return UndecodableFrame(int(chunk_ids[0]), 0, "does not decode")


def decode_chunks(
  blocks: Iterable[tuple[np.ndarray, np.ndarray]], *, block: int, height: int, width: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Decodes and resizes blocks of encoded chunks in parallel, in order.

  Args:
    blocks: `(chunk ids [n], encoded frames: object array [n, T] of bytes)`, every block of
      `block` rows except possibly the last.
  Yields:
    `(chunk ids [n], clips uint8 [n, T, height, width, 3])` per block.
  Raises:
    UndecodableFrame: naming the chunk id and frame slot of the first frame that fails.
  """
  pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}
  counter = itertools.count()
  first = next(iter_blocks := iter(blocks), None)
  if first is None:
    return
  num_frames = first[1].shape[1]

  def generate():
    for chunk_ids, encoded in itertools.chain([first], iter_blocks):
      pending[next(counter)] = (chunk_ids, encoded)
      yield np.asarray(chunk_ids, np.int32), encoded

  signature = (
    tf.TensorSpec([None], tf.int32),
    tf.TensorSpec([None, num_frames], tf.string),
  )

  def clip(chunk_id, frames):
    return chunk_id, tf.stack([decode_frame(frames[t], height, width) for t in range(num_frames)])

  ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
  ds = ds.unbatch().map(clip, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(block).prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  # Parallelism comes from decoding many clips at once; splitting one resize over threads
  # only adds synchronisation (about 15% more clips per CPU-second measured here).
  options.threading.max_intra_op_parallelism = 1
  iterator = iter(ds.with_options(options))
  for number in itertools.count():
    try:
      chunk_ids, clips = next(iterator)
    except StopIteration:
      return
    except tf.errors.OpError:
      raise _first_undecodable(*pending[number]) from None
    pending.pop(number)
    yield chunk_ids.numpy(), clips.numpy()
