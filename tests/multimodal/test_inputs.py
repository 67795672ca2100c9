"""Metadata encoding: fitted on train only, bad input (missing column, non-numeric, unseen category), config."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medcls.config import DataConfig, InputsConfig, build_config
from medcls.data.sources import load_data
from medcls.errors import ConfigError, DataError
from medcls.multimodal import InputEncoder
from medcls.multimodal.tabular import MISSING, UNKNOWN, TabularEncoder
from medcls.testing.multimodal import make_joint_dataset

INPUTS = InputsConfig(numeric=["age"], categorical=["sex", "view"])


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_joint_dataset(tmp_path_factory.mktemp("inputs") / "data", n_train=40, n_val=16, n_test=16)


def _data(manifest):
    return load_data(DataConfig(source=f"csv:{manifest}", options={"split_col": "split"}, min_val_size=4))


def _state(manifest):
    return InputEncoder.fit(INPUTS, _data(manifest).train).to_dict()


def test_any_csv_table_carries_its_metadata(manifest):
    data = _data(manifest)
    df = pd.read_csv(manifest)
    for split in ("train", "val", "test"):
        t = data.split(split)
        rows = df.set_index("path").loc[t.ids]
        assert t.meta["view"].tolist() == rows["view"].tolist()
        sub = t.subset([3, 1])
        assert sub.meta["path"].tolist() == [t.ids[3], t.ids[1]]


def test_standardisation_and_vocab_fitted_on_train_only(manifest, tmp_path):
    before = _state(manifest)
    df = pd.read_csv(manifest)
    held = df["split"] != "train"
    df.loc[held, "age"] = df.loc[held, "age"] * 100 + 7
    df.loc[held, "sex"] = "X"
    df.loc[held, "view"] = "oblique"
    edited = tmp_path / "edited.csv"
    df.to_csv(edited, index=False)
    (tmp_path / "images").symlink_to(manifest.parent / "images")
    assert _state(edited) == before  # val/test values never reach the fitted state
    df.loc[df.index[df["split"] == "train"][0], "age"] = 1000.0  # ...but train values do (the test can fail)
    df.to_csv(edited, index=False)
    assert _state(edited)["tabular"]["mean"] != before["tabular"]["mean"]
    ages = pd.read_csv(manifest).query("split == 'train'")["age"].dropna()
    assert before["tabular"]["mean"] == pytest.approx([ages.mean()]) and before["tabular"]["std"] == pytest.approx([ages.std(ddof=0)])
    assert before["tabular"]["vocab"] == {"sex": ["F", "M"], "view": ["frontal", "lateral"]}


def test_unseen_categories_go_to_unknown_and_are_counted():
    enc = TabularEncoder.fit(pd.DataFrame({"age": [10, 20, None], "site": ["knee", "hand", "knee"]}), ["age"], ["site"])
    frame = pd.DataFrame({"age": [15, None, 20], "site": ["skull", None, "skull"]})
    with pytest.warns(UserWarning, match=r"2 categorical value\(s\) unseen in train.*site: 2 \('skull'\)"):
        arrays, report = enc.encode(frame, where="test split")
    assert arrays["categorical"][:, 0].tolist() == [UNKNOWN, MISSING, UNKNOWN]
    assert report["unknown_categories"]["site"]["count"] == 2
    assert arrays["numeric_missing"][:, 0].tolist() == [0, 1, 0]
    assert arrays["numeric"][0, 0] == pytest.approx((15 - 15) / 5) and arrays["numeric"][1, 0] == 0
    assert arrays["present"].tolist() == [1, 0, 1]  # row 2 knows nothing: the learned "missing" embedding


def test_non_numeric_value_in_numeric_column(manifest, tmp_path):
    df = pd.read_csv(manifest)
    df["age"] = df["age"].astype(object)
    df.loc[2, "age"] = "forty"
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    (tmp_path / "images").symlink_to(manifest.parent / "images")
    with pytest.raises(DataError, match=r"numeric column 'age' holds non-numeric value\(s\) 'forty'"):
        InputEncoder.fit(INPUTS, _data(bad).train)


def test_configured_column_missing_from_csv(manifest):
    with pytest.raises(DataError, match=r"'sexx' are not in the metadata.*Did you mean 'sex'"):
        InputEncoder.fit(InputsConfig(categorical=["sexx"]), _data(manifest).train)


def test_source_without_metadata(pneumonia_npz):
    data = load_data(DataConfig(source="medmnist:pneumoniamnist", options={"path": str(pneumonia_npz)}, limit=16))
    with pytest.raises(DataError, match="carries no per-sample metadata"):
        InputEncoder.fit(INPUTS, data.train)


def test_request_keys_checked_and_inputs_used():
    enc = InputEncoder(TabularEncoder.fit(pd.DataFrame({"age": [1.0, 3.0], "sex": ["M", "F"]}), ["age"], ["sex"]))
    with pytest.raises(DataError, match=r"unknown metadata key\(s\) \['agee', 'bmi'\].*Expected keys: age, sex"):
        enc.encode_requests(1, [{"agee": 1, "bmi": 2}])
    arrays, used = enc.encode_requests(3, [{"age": 2}, None, {"sex": "M", "age": None}])
    assert used == [["image", "metadata:age"], ["image"], ["image", "metadata:sex"]]
    assert arrays["present"][:, 0].tolist() == [1, 0, 1] and arrays["numeric"].dtype == np.float32


def test_config_defaults_and_checks():
    cfg = build_config({})
    assert cfg.model.fusion == "none" and cfg.inputs.columns == []
    with pytest.raises(ConfigError, match="needs extra inputs"):
        build_config({"model": {"fusion": "gated"}})
    with pytest.raises(ConfigError, match="needs inputs.text_encoder"):
        build_config({"inputs": {"text": "report"}})
    with pytest.raises(ConfigError, match="mixup/cutmix"):
        build_config({"inputs": {"numeric": ["age"]}, "model": {"fusion": "concat"}, "train": {"mixup": 0.2}})
    with pytest.raises(ConfigError, match="fusion"):
        build_config({"model": {"fusion": "sum"}})
