"""Data generators for tests and benchmarks, not used by the library: out-of-distribution pictures
(``ood_images``) and synthetic image + metadata datasets with a BTXRD-like folder writer (``multimodal``)."""
