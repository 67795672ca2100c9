"""Stratified and patient-grouped splitting."""

from __future__ import annotations

import numpy as np
import pytest

from medcls.data.splits import split_indices
from medcls.errors import DataError


def _check_partition(keep: np.ndarray, held: np.ndarray, n: int) -> None:
    assert len(np.intersect1d(keep, held)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([keep, held])), np.arange(n))


def test_stratified_fraction_and_balance():
    labels = np.array([0] * 80 + [1] * 20)
    keep, held = split_indices(labels, 0.2, seed=0)
    _check_partition(keep, held, 100)
    assert len(held) == 20
    assert np.bincount(labels[held]).tolist() == [16, 4]  # class ratio kept


def test_seed_is_deterministic():
    labels = np.arange(60) % 3
    a = split_indices(labels, 0.25, seed=1)
    b = split_indices(labels, 0.25, seed=1)
    c = split_indices(labels, 0.25, seed=2)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_groups_never_straddle():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"patient{i}" for i in range(30)], 3)  # 3 images per patient
    labels = np.repeat(rng.integers(0, 2, 30), 3)
    for seed in range(5):
        keep, held = split_indices(labels, 0.2, seed=seed, groups=groups)
        _check_partition(keep, held, 90)
        assert set(groups[keep]).isdisjoint(groups[held])
        assert 0.1 < len(held) / 90 < 0.35
        assert set(labels[held]) == {0, 1}


def test_groups_with_a_rare_class_fall_back_to_group_split():
    groups = np.array([f"p{i // 2}" for i in range(20)])
    labels = np.zeros(20, dtype=int)
    labels[0:2] = 1  # one patient carries the only positive images
    keep, held = split_indices(labels, 0.3, seed=0, groups=groups)
    _check_partition(keep, held, 20)
    assert set(groups[keep]).isdisjoint(groups[held])


def test_rare_class_without_groups_does_not_crash():
    labels = np.array([0] * 30 + [1])
    keep, held = split_indices(labels, 0.2, seed=0)
    _check_partition(keep, held, 31)


def test_multilabel_labels_are_stratified_by_first_positive():
    labels = np.zeros((40, 3), dtype=np.float32)
    labels[np.arange(40), np.arange(40) % 3] = 1
    keep, held = split_indices(labels, 0.25, seed=0)
    _check_partition(keep, held, 40)
    assert set(labels[held].argmax(1)) == {0, 1, 2}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fraction(fraction):
    with pytest.raises(DataError, match=r"split fraction must be in \(0, 1\)"):
        split_indices(np.array([0, 1, 0, 1]), fraction)


def test_too_few_samples_or_groups():
    with pytest.raises(DataError, match="cannot split 1 sample"):
        split_indices(np.array([0]), 0.5)
    with pytest.raises(DataError, match="only 1 distinct group id"):
        split_indices(np.array([0, 1, 0, 1]), 0.5, groups=np.array(["p1"] * 4))
