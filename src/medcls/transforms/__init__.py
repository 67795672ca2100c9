"""One definition of how an image becomes a tensor.

:class:`Preprocess` (deterministic, per image) is shared by training,
evaluation, export and serving; :class:`BatchAugment` (random, whole batches as
tensors) is used in training only. Normalisation by mean/std lives inside the
model (:class:`medcls.models.Classifier`), so exported models carry it too.
"""

from .augment import PRESETS, BatchAugment, build_augment
from .preprocess import Preprocess, PreprocessConfig

__all__ = ["PRESETS", "BatchAugment", "Preprocess", "PreprocessConfig", "build_augment"]
