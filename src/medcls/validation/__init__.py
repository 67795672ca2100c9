"""External validation: a trained model on a labelled source it never saw (``medcls validate``).

:func:`validate_model` computes every figure and writes nothing; :func:`write_validation` writes the
``validate-<name>/`` folder.
"""

from .core import Validation, default_name, output_dir, validate_model, write_validation
from .labels import ClassMatch, match_classes, read_label_map

__all__ = ["ClassMatch", "Validation", "default_name", "match_classes", "output_dir", "read_label_map",
           "validate_model", "write_validation"]
