"""A test split that fails the test run if anything reads it (cv and tune must never touch test)."""

from __future__ import annotations

import pytest

from medcls.data.sources import LoadedData
from medcls.data.table import ImageTable


class Tripwire(ImageTable):
    """Raises on any read of labels, length, images or a subset."""

    def __init__(self) -> None:
        self.ids, self.groups = [], None

    @property
    def labels(self):
        raise AssertionError("the test split's labels were read")

    def __len__(self) -> int:
        raise AssertionError("the test split's length was read")

    def load(self, i):
        raise AssertionError("a test image was read")

    def _take(self, idx):
        raise AssertionError("the test split was subset")


@pytest.fixture(scope="session")
def without_test():
    """``without_test(load_data)``: a loader whose test split is a :class:`Tripwire`."""

    def wrap(real):
        def load(data_cfg):
            d = real(data_cfg)
            return LoadedData(d.spec, d.train, d.val, Tripwire(), d.notes)

        return load

    return wrap
