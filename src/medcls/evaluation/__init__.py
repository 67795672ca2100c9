"""Evaluation of trained runs: metrics, per-sample predictions, curves (drawn and reported by :mod:`medcls.reports`)."""

from .evaluator import evaluate_run, headline

__all__ = ["evaluate_run", "headline"]
