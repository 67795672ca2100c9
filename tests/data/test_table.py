"""Image tables: every kind of subset remembers the source table and its rows there (what caches share)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medcls.data.splits import ConcatTable
from medcls.data.table import ArrayTable, FileTable, ImageTable


def _array_table(n: int = 10) -> ArrayTable:
    images = np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    return ArrayTable(images, np.arange(n) % 2, meta=pd.DataFrame({"age": np.arange(n) * 10}))


@pytest.mark.parametrize("make", [
    _array_table,
    lambda: FileTable([f"/nowhere/{i}.png" for i in range(10)], np.arange(10) % 2),
    lambda: ConcatTable([_array_table(4), _array_table(6)]),
])
def test_subset_of_a_subset_records_the_source_rows(make):
    table = make()
    first = table.subset([9, 7, 5, 3, 1])
    assert type(first) is type(table) and first.base is table
    np.testing.assert_array_equal(first.base_rows, [9, 7, 5, 3, 1])
    second = first.subset(np.array([4, 0]))
    assert type(second) is type(table) and second.base is table
    np.testing.assert_array_equal(second.base_rows, [1, 9])
    assert second.ids == [table.ids[1], table.ids[9]] and second.labels.tolist() == [1, 1]
    assert table.base is None and table.base_rows is None


def test_subset_keeps_images_and_metadata_aligned():
    sub = _array_table().subset([3, 8])
    assert sub.load(1)[0, 0] == 8 and sub.meta["age"].tolist() == [30, 80]


def test_a_table_without_rows_to_take_cannot_be_subset():
    class Bare(ImageTable):
        labels, ids, groups = np.zeros(2, np.int64), ["a", "b"], None

    with pytest.raises(NotImplementedError):
        Bare().subset([0])
