"""Evaluation of trained runs: metrics, per-sample predictions, curves."""

from .evaluator import evaluate_run, headline

__all__ = ["evaluate_run", "headline"]
