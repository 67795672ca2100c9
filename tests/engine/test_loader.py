"""The order of an epoch: seeded by (seed, epoch), each index once (random) or class-balanced draws, DDP shards."""

from __future__ import annotations

import numpy as np
import pytest

from medcls.engine.loader import epoch_order
from medcls.errors import ConfigError

LABELS = np.array([0] * 90 + [1] * 10)


def test_same_seed_and_epoch_same_order_and_each_epoch_a_new_one():
    for sampler in ("random", "balanced"):
        a = epoch_order(LABELS, sampler=sampler, seed=3, epoch=2)
        assert np.array_equal(a, epoch_order(LABELS, sampler=sampler, seed=3, epoch=2)), sampler
        assert not np.array_equal(a, epoch_order(LABELS, sampler=sampler, seed=3, epoch=3)), sampler
        assert not np.array_equal(a, epoch_order(LABELS, sampler=sampler, seed=4, epoch=2)), sampler


def test_random_sampler_visits_every_index_once_in_a_shuffled_order():
    order = epoch_order(LABELS, sampler="random", seed=0, epoch=0)
    assert np.array_equal(np.sort(order), np.arange(len(LABELS)))
    assert not np.array_equal(order, np.arange(len(LABELS)))


@pytest.mark.parametrize("sampler", ["random", "balanced"])
def test_ranks_partition_one_order_when_the_size_divides(sampler):
    whole = epoch_order(LABELS, sampler=sampler, seed=1, epoch=5)
    shards = [epoch_order(LABELS, sampler=sampler, seed=1, epoch=5, rank=r, world_size=4) for r in range(4)]
    assert [len(s) for s in shards] == [25] * 4
    assert np.array_equal(np.sort(np.concatenate(shards)), np.sort(whole))  # the same epoch, split up
    if sampler == "random":
        assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(len(LABELS)))  # no duplicate, none missing


def test_ranks_of_an_uneven_size_get_equal_shards_that_cover_every_index():
    labels = LABELS[:10]
    shards = [epoch_order(labels, sampler="random", seed=0, epoch=0, rank=r, world_size=3) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # equal, or DDP ranks would wait for each other
    both = np.concatenate(shards)
    assert set(both.tolist()) == set(range(10))
    assert len(both) - len(set(both.tolist())) == 2  # padded by repeating two indices, as DistributedSampler


def test_balanced_sampler_draws_the_classes_equally_often():
    labels = np.array([0] * 9000 + [1] * 1000)
    order = epoch_order(labels, sampler="balanced", seed=0, epoch=0)
    assert len(order) == len(labels)
    assert abs(labels[order].mean() - 0.5) < 0.03  # 10% of the data, half of the draws
    assert len(np.unique(order)) < len(order)  # with replacement


def test_balanced_sampler_of_one_hot_labels_balances_their_classes():
    y = np.array([0] * 900 + [1] * 100 + [2] * 1000)
    onehot = np.eye(3, dtype=np.float32)[y]
    order = epoch_order(onehot, sampler="balanced", seed=2, epoch=0)
    freq = np.bincount(y[order], minlength=3) / len(order)
    assert np.all(np.abs(freq - 1 / 3) < 0.04)


def test_an_unknown_sampler_is_one_clear_error():
    with pytest.raises(ConfigError, match="train.sampler must be one of random, balanced, got 'balnced'. "
                                          "Did you mean 'balanced'"):
        epoch_order(LABELS, sampler="balnced", seed=0, epoch=0)
