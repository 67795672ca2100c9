"""Experiments that run many trainings: k-fold cross-validation (:func:`cv`) and hyperparameter search (:func:`tune`).

Neither reads the test split (``cv`` only with ``evaluate_test=True``): every choice is made on validation data.
The functions shadow their modules' names here; import helpers as ``from medcls.experiments.cv import make_folds``.
"""

from __future__ import annotations

from .cv import CVResult, cv
from .tune import TuneResult, tune

__all__ = ["CVResult", "TuneResult", "cv", "tune"]
