"""A bundle's drift reference comes back from drift.safetensors as it was fitted."""

from __future__ import annotations

import numpy as np

from medcls.artefact.drift import load_reference, save_reference
from medcls.metrics.drift import fit_reference


def test_the_reference_round_trips_with_its_pca_intact(tmp_path):
    """scikit-learn's PCA keeps its components in Fortran order; they must not come back transposed in place."""
    rng = np.random.default_rng(0)
    f_train, f_val = rng.normal(size=(300, 40)) * np.linspace(3, 0.1, 40), rng.normal(size=(90, 40))
    ref = fit_reference(f_train, f_val, rng.random(90), rng.integers(0, 2, 90), 0.9, ["normal", "pneumonia"], k=8)
    save_reference(ref, tmp_path / "drift.safetensors")
    back = load_reference(tmp_path / "drift.safetensors")
    np.testing.assert_allclose(back.components, ref.components, atol=1e-6)
    np.testing.assert_allclose(back.components @ back.components.T, np.eye(8), atol=1e-5)
    np.testing.assert_allclose(back.project(f_val), back.features, atol=1e-4)
    assert back.threshold == 0.9 and back.class_names == ["normal", "pneumonia"]
    np.testing.assert_array_equal(back.predicted, ref.predicted)
