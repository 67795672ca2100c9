"""Explanations of a model's predictions: class activation maps (Grad-CAM & co), their sanity checks, figures."""
