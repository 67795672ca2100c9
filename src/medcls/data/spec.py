"""What a dataset is: task, classes, channels, positive class."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, get_args

from ..choices import Task
from ..errors import DataError, did_you_mean


@dataclass(frozen=True)
class DatasetSpec:
    """Describes a labelled image dataset independently of where it is stored.

    ``positive_index`` is the class whose probability is the score for binary
    metrics (AUC, sensitivity ...). ``channels`` is the native channel count of
    the images (1 gray, 3 RGB).
    """

    name: str
    task: Task
    class_names: tuple[str, ...]
    channels: int
    positive_index: int | None = None
    ordinal: bool = False
    native_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in get_args(Task):
            raise DataError(f"task must be binary, multiclass or multilabel, got {self.task!r}")
        if len(self.class_names) < 1 or (self.task != "multilabel" and len(self.class_names) < 2):
            raise DataError(f"{self.name}: need at least 2 classes, got {list(self.class_names)}")
        if len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"{self.name}: duplicate class names {list(self.class_names)}")
        if self.task == "binary":
            if len(self.class_names) != 2:
                raise DataError(f"{self.name}: a binary task has 2 classes, got {list(self.class_names)}")
            if self.positive_index is None:
                object.__setattr__(self, "positive_index", 1)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def with_positive_class(self, name: str | None) -> DatasetSpec:
        """Return a copy whose positive class is ``name`` (binary tasks only)."""
        if name is None:
            return self
        if self.task != "binary":
            raise DataError(f"data.positive_class applies to binary tasks; {self.name} is {self.task}")
        if name not in self.class_names:
            raise DataError(
                f"positive class {name!r} is not a class of {self.name}.{did_you_mean(name, self.class_names)} "
                f"Classes: {list(self.class_names)}"
            )
        return DatasetSpec(**{**asdict(self), "positive_index": self.class_names.index(name)})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetSpec:
        d = dict(d)
        d["class_names"] = tuple(d["class_names"])
        return cls(**d)
