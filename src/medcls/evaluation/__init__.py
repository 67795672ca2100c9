"""Evaluation of trained runs: metrics with CIs, per-sample predictions, curves.

:func:`evaluate_split` computes an :class:`EvalResult` (metrics and the cases behind them) and writes
nothing; :func:`write_evaluation` writes its files; :func:`evaluate_run` does both.
"""

from .evaluator import evaluate_run, evaluate_split, headline, write_evaluation
from .result import EvalResult, read_predictions

__all__ = ["EvalResult", "evaluate_run", "evaluate_split", "headline", "read_predictions", "write_evaluation"]
