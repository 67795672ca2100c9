"""Explanations of a model's predictions: class activation maps (Grad-CAM & co) and the layer they are taken at
(``cam``), their sanity checks (``sanity``), pictures and files of a map (``figures``), one image explained
(``image``: ``medcls explain`` and ``POST /v1/explain``) and galleries of the most confident errors of a split
(``mining``).
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
from .figures import MIN_DISPLAY, VIEWS, heatmap_rgba, image_rgb, overlay, png_bytes, save_explanation, save_map
from .image import Explanation, explain_image, explain_png
from .mining import mine_errors
from .sanity import cam_sanity

__all__ = ["METHODS", "MIN_DISPLAY", "MIN_MAP", "VIEWS", "Explanation", "cam_sanity", "check_method", "choose_layer",
           "compute_cam", "explain_image", "explain_png", "heatmap_rgba", "image_branch", "image_rgb", "layer_label",
           "map_sizes", "mine_errors", "overlay", "pick_layer", "png_bytes", "resolve_target_layer",
           "save_explanation", "save_map"]
