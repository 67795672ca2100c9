"""Site labels matched to the model's classes: by name, by a label map (several to one, drop), one line on a
mismatch."""

from __future__ import annotations

import numpy as np
import pytest

from medcls.errors import ConfigError, DataError
from medcls.validation import match_classes, read_label_map

MODEL = ["normal", "pneumonia"]


def test_names_match_exactly_or_ignoring_case():
    m = match_classes(["NORMAL", "pneumonia"], MODEL)
    assert m.mapping == {"NORMAL": "normal", "pneumonia": "pneumonia"}
    assert m.apply(np.array([0, 1, 1])).tolist() == [0, 1, 1]
    assert m.notes == ["site label 'NORMAL' counted as 'normal'"]


def test_several_labels_to_one_class_and_a_dropped_label():
    m = match_classes(["bacteria", "normal", "unclear", "virus"], MODEL,
                      {"bacteria": "pneumonia", "virus": "pneumonia", "unclear": None})
    assert m.apply(np.array([0, 1, 2, 3])).tolist() == [1, 0, -1, 1]
    assert "site label 'unclear' dropped (--label-map)" in m.notes


def test_a_site_label_the_model_lacks_and_a_class_the_site_lacks_are_one_line():
    with pytest.raises(DataError) as e:
        match_classes(["normal", "covid"], MODEL, where="site B")
    msg = str(e.value)
    assert "\n" not in msg
    assert "site B has label(s) 'covid' that the model lacks" in msg
    assert "the model has class(es) 'pneumonia' that site B lacks" in msg
    assert "--label-map" in msg


def test_label_map_errors_name_the_wrong_entry():
    with pytest.raises(DataError, match=r"names label\(s\) 'virsu' that the source does not have\. Did you mean 'virus'"):
        match_classes(["normal", "virus"], MODEL, {"virsu": "pneumonia"})
    with pytest.raises(DataError, match=r"maps to 'pneumonai', not a class of the model\. Did you mean 'pneumonia'"):
        match_classes(["normal", "virus"], MODEL, {"virus": "pneumonai"})


def test_reading_a_label_map(tmp_path):
    p = tmp_path / "map.yaml"
    p.write_text("VIRUS: pneumonia\nBACTERIA: pneumonia\nUNCLEAR: null\n")
    assert read_label_map(p) == {"VIRUS": "pneumonia", "BACTERIA": "pneumonia", "UNCLEAR": None}
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must map site labels to model classes"):
        read_label_map(p)
    p.write_text("VIRUS: [pneumonia]\n")
    with pytest.raises(ConfigError, match="'VIRUS' maps to \\['pneumonia'\\]; each label maps to one model class"):
        read_label_map(p)
    with pytest.raises(ConfigError, match="no such file"):
        read_label_map(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="a directory; expected a YAML file"):
        read_label_map(tmp_path)
