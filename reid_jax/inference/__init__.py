"""The inference core: every mode from a checkpoint to an answer on one path.

- `model`: `InferenceModel`, a trained network frozen for inference (graph, weights, input
  normalisation, step, the checkpoint's metadata), restored from the model part of a checkpoint
  alone by `restore`;
- `chunks`: the one chunk stream, T-frame chunks of many tracklets per fixed-shape batch from any
  tracklet source, shared out over processes;
- `features`: per-tracklet features, the mean of their chunk features.

Retrieval (block planning, the exact top k over a sharded gallery) is `reid_jax.retrieval`.
"""
