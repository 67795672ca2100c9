"""One definition of how an image becomes a tensor.

:class:`Preprocess` (deterministic, per image) is shared by training,
evaluation, export and serving; :class:`BatchAugment` (random, whole batches as
tensors) is used in training only. Normalisation by mean/std lives inside the
model (:class:`medcls.models.Classifier`), so exported models carry it too.
H&E stain normalisation (:mod:`medcls.transforms.stain`, Macenko/Reinhard) is a
step of :class:`Preprocess` whose fitted reference is stored in its config.
"""

from .augment import PRESETS, BatchAugment, build_augment
from .preprocess import Preprocess, PreprocessConfig
from .stain import StainNormalizer, fit_stain

__all__ = ["PRESETS", "BatchAugment", "Preprocess", "PreprocessConfig", "StainNormalizer", "build_augment", "fit_stain"]
