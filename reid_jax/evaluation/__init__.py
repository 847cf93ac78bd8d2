"""Evaluation: feature extraction, ranking metrics, protocols, re-ranking, reports."""

from reid_jax.evaluation.extraction import extract_features
from reid_jax.evaluation.protocols import protocol_sets, run_protocol
from reid_jax.evaluation.ranking import evaluate, evaluate_rank
from reid_jax.evaluation.report import write_report
from reid_jax.evaluation.rerank import re_ranking

__all__ = [
  "evaluate",
  "evaluate_rank",
  "extract_features",
  "protocol_sets",
  "re_ranking",
  "run_protocol",
  "write_report",
]
