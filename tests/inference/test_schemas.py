"""The result schemas: what ``Predictor.predict`` returns is a :class:`Prediction` (or a :class:`PredictionError`),
and the schemas refuse what is not part of the one result shape."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from medcls import Predictor
from medcls.inference.schemas import OodResult, Prediction, PredictionError


@pytest.fixture(scope="module")
def result(bundle, pneumonia_arrays) -> dict:
    return Predictor.load(bundle[0], backend="onnx").predict([pneumonia_arrays["test_images"][0]])[0]


def test_a_predictor_result_is_a_prediction(result):
    assert Prediction.model_validate(result).model_dump(exclude_none=True) == result


@pytest.mark.parametrize("edit", [
    lambda r: r.update(extra_field=1),
    lambda r: r["model"].update(backend="tensorrt"),
    lambda r: r.update(task="segmentation"),
    lambda r: r["decision"].update(unknown=0.5),
    lambda r: r.pop("ood"),
], ids=["extra-field", "unknown-backend", "unknown-task", "extra-decision-field", "no-ood"])
def test_what_is_not_the_result_shape_is_refused(result, edit):
    import copy

    bad = copy.deepcopy(result)
    edit(bad)
    with pytest.raises(ValidationError):
        Prediction.model_validate(bad)


def test_a_skipped_image_is_a_prediction_error(evaluated_run, tmp_path):
    (r,) = Predictor.load(evaluated_run.path).predict([tmp_path / "missing.png"], on_error="skip")
    assert PredictionError.model_validate(r).model_dump() == r
    with pytest.raises(ValidationError):
        Prediction.model_validate(r)


def test_without_a_gate_the_ood_block_says_only_that():
    assert OodResult(available=False).model_dump(exclude_none=True) == {"available": False}
