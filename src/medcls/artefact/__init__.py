"""The trained artefact: one :class:`ModelSpec`, post-processing per checkpoint, one loader.

``load(path, checkpoint) -> (model, preprocess, postprocess)`` reads a run directory or
a bundle alike; every consumer (runs, Predictor, export, Grad-CAM, server, experiments)
goes through it, so none can disagree on how an image becomes a tensor or a
probability becomes a decision.
"""

from .fit import fit_postprocess
from .loader import BUNDLE_FILE, CHECKPOINTS, MODEL_FILE, TEXT_DIR, Artefact, bundle_digest, load, open_artefact
from .postprocess import (
    NO_FINDING,
    POSTPROCESS_FILE,
    Postprocess,
    checkpoint_identity,
    findings_text,
    read_postprocess,
    write_postprocess,
)
from .spec import ModelSpec, resolve_stem

__all__ = ["BUNDLE_FILE", "CHECKPOINTS", "MODEL_FILE", "NO_FINDING", "POSTPROCESS_FILE", "TEXT_DIR", "Artefact",
           "ModelSpec", "Postprocess", "bundle_digest", "checkpoint_identity", "findings_text", "fit_postprocess", "load",
           "open_artefact",
           "read_postprocess", "resolve_stem", "write_postprocess"]
