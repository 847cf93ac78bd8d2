"""Evaluation: ranking metrics, protocols, re-ranking, calibration, reports; `runner` evaluates a
model on a built dataset and holds the `eval` and `extract` modes.

The public functions below are loaded on first use (PEP 562 `__getattr__`), so that importing
one submodule (e.g. `calibrate`'s threshold reader) does not load the others' dependencies.
"""

import importlib

_EXPORTS = {
  "evaluate": "reid_jax.evaluation.ranking",
  "evaluate_rank": "reid_jax.evaluation.ranking",
  "protocol_sets": "reid_jax.evaluation.protocols",
  "re_ranking": "reid_jax.evaluation.rerank",
  "run_protocol": "reid_jax.evaluation.protocols",
  "write_report": "reid_jax.evaluation.report",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
