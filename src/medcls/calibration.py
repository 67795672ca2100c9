"""The calibration step: temperature and operating points fitted on the validation split, never on test.

:func:`calibrate_run` is the one step that writes post-processing (the fitting itself is
:func:`medcls.artefact.fit_postprocess`, beside :class:`~medcls.artefact.Postprocess`): it fits a
checkpoint's temperature and operating points on val and stores them under that
checkpoint's name in ``RUN_DIR/postprocess.json`` (with its epoch and sha256), for
evaluation, ``predict``, export and serving to read. Training calls it for ``best``
and ``last``; ``medcls calibrate RUN`` runs it again (e.g. after changing
``eval.operating_point``).

Multi-label runs: probabilities = sigmoid(logits / T) with **one temperature
shared by all labels** (fitted on the pooled per-label NLL). A per-label T would
be fitted on a handful of positives for rare findings (or not at all when a label
has one class on val) and would not change any decision, since thresholds are
chosen per label on the calibrated probabilities (a monotone map of the logit);
one T keeps calibration stable and ``temperature`` a single number everywhere.
Operating points are chosen **per label** on val (``operating_points.per_label``);
``thresholds`` maps each label to the threshold of ``eval.operating_point``
(0.5 for a label that has a single class on val, with a note). The decision is
the list of labels with p >= their threshold, possibly empty ("no finding").
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from .artefact import Postprocess, checkpoint_identity, fit_postprocess, write_postprocess
from .runs import Run

log = logging.getLogger("medcls")

__all__ = ["calibrate_run", "split_logits"]


def split_logits(run: Run, model: torch.nn.Module, table, device: torch.device, *, tta: bool = False,
                 where: str = "data") -> np.ndarray:
    """Logits of ``model`` on every sample of ``table`` (``tta``: averaged over the preset's views)."""
    from .engine.loader import Batches
    from .engine.predict import predict_logits
    from .transforms.tta import tta_views

    batches = Batches(table, run.preprocess, batch_size=run.config.eval.batch_size, cache="off",
                      num_workers=run.config.data.num_workers, inputs=run.inputs, where=where, device=device)
    views = tta_views(run.model_spec.preset) if tta else None
    return predict_logits(model, batches, device, views=views)


def calibrate_run(run: Run, checkpoint: str = "best", *, data=None, device: torch.device | None = None,
                  val_logits: np.ndarray | None = None) -> Postprocess:
    """Fit ``checkpoint``'s temperature and operating points on ``run``'s val split and store them.

    ``data`` (a LoadedData) saves reloading the dataset; ``val_logits`` saves the forward pass.
    """
    from .data.sources import load_data

    ev = run.config.eval
    data = data or load_data(run.config.data)
    path = run.checkpoint_path(checkpoint)
    model, meta = run.build_model(checkpoint, device=str(device or "cpu"))
    if val_logits is None:
        val_logits = split_logits(run, model, data.val, device or torch.device("cpu"), where="val split")
    spec = run.dataset
    post = fit_postprocess(spec.task, val_logits, np.asarray(data.val.labels), positive_index=spec.positive_index,
                           operating_point=ev.operating_point, target_sensitivity=ev.target_sensitivity,
                           target_specificity=ev.target_specificity, calibrate=ev.calibrate,
                           class_names=list(spec.class_names))
    post.checkpoint = checkpoint_identity(path, meta, checkpoint)
    out = write_postprocess(run.path, checkpoint, post)
    rule = f"{post.selected} at {post.threshold:.3g}" if spec.task == "binary" else post.selected
    log.info("calibrated %s (epoch %s) on val (n=%d): T = %.3f, operating point %s; written to %s", checkpoint,
             meta.get("epoch"), post.n_val or 0, post.temperature, rule, out)
    return post
