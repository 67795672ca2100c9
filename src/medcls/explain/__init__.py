"""Explanations of a model's predictions: class activation maps (Grad-CAM & co) and the layer they are taken at
(``cam``), their sanity checks (``sanity``), pictures and files of a map (``figures``), one image of a run
explained (``image``, ``medcls explain``) and galleries of the most confident errors of a split (``mining``).
"""

from .cam import (
    METHODS,
    MIN_MAP,
    check_method,
    choose_layer,
    compute_cam,
    image_branch,
    layer_label,
    map_sizes,
    pick_layer,
    resolve_target_layer,
)
from .figures import MIN_DISPLAY, overlay, save_explanation, save_map
from .image import explain_image
from .mining import mine_errors
from .sanity import cam_sanity

__all__ = ["METHODS", "MIN_DISPLAY", "MIN_MAP", "cam_sanity", "check_method", "choose_layer", "compute_cam",
           "explain_image", "image_branch", "layer_label", "map_sizes", "mine_errors", "overlay", "pick_layer",
           "resolve_target_layer", "save_explanation", "save_map"]
