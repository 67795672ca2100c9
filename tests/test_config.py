from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medcls.config import Config, load_config, parse_override, save_config
from medcls.errors import ConfigError


def test_defaults_and_yaml_roundtrip(tmp_path):
    cfg = load_config("configs/pneumoniamnist.yaml")
    assert cfg.data.source == "medmnist:pneumoniamnist"
    assert cfg.model.name == "resnet18"
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


def test_overrides_are_typed():
    cfg = load_config(None, ["train.epochs=5", "model.name=resnet34", "train.class_weights=[1, 2.5]",
                             "data.options={size: 64}", "train.clip_grad_norm=null"])
    assert cfg.train.epochs == 5 and cfg.model.name == "resnet34"
    assert cfg.train.class_weights == [1.0, 2.5]
    assert cfg.data.options == {"size": 64}
    assert cfg.train.clip_grad_norm is None


def test_unknown_key_names_key_and_suggests():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.epoch=5"])
    msg = str(e.value)
    assert "unknown key 'train.epoch'" in msg and "Did you mean 'train.epochs'" in msg and "batch_size" in msg


def test_unknown_section_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'model'"):
        load_config(None, ["modle.name=resnet18"])


@pytest.mark.parametrize("item,expect", [
    ("train.lr=-1", "train.lr: Input should be greater than 0 (got -1)"),
    ("train.epochs=0", "train.epochs"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("train.optimizer=adam", "'adamw' or 'sgd'"),
    ("model.drop_rate=abc", "got 'abc'"),
])
def test_bad_values_say_what_was_expected(item, expect):
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    assert expect in str(e.value)


@pytest.mark.parametrize("item", ["train.epochs", "=5", "train..epochs=5"])
def test_malformed_override(item):
    with pytest.raises(ConfigError, match="--set"):
        parse_override(item)


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="'name' is a value, not a section"):
        load_config("configs/pneumoniamnist.yaml", ["name.sub=1"])
    with pytest.raises(ConfigError, match="name: Input should be a valid string"):
        load_config(None, ["name.sub=1"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)


def test_config_model_is_frozen_against_typos_at_runtime():
    cfg = Config()
    with pytest.raises(ValueError):
        cfg.train.epochs = -3


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.name and cfg.data.source


# ---------------------------------------------------------------- YAML 1.2 booleans: string choices as typed
@pytest.mark.parametrize("item,key,value", [
    ("data.cache=off", ("data", "cache"), "off"),
    ("data.cache=on", ("data", "cache"), "on"),
    ("train.amp=off", ("train", "amp"), "off"),
    ("train.ema=off", ("train", "ema"), False),
    ("train.ema=true", ("train", "ema"), True),
    ("model.pretrained=yes", ("model", "pretrained"), True),
    ("train.channels_last=no", ("train", "channels_last"), False),
    ("train.epochs=5", ("train", "epochs"), 5),
])
def test_set_values_keep_documented_string_choices(item, key, value):
    from medcls.config import load_config

    cfg = load_config(None, [item])
    assert getattr(getattr(cfg, key[0]), key[1]) == value


def test_yaml_file_with_off_and_yes(tmp_path):
    from medcls.config import load_config

    p = tmp_path / "c.yaml"
    p.write_text("data:\n  cache: off\ntrain:\n  ema: off\n  amp: off\nmodel:\n  pretrained: yes\n")
    cfg = load_config(p)
    assert (cfg.data.cache, cfg.train.ema, cfg.train.amp, cfg.model.pretrained) == ("off", False, "off", True)


def test_a_bad_choice_still_says_what_is_allowed():
    from medcls.config import load_config

    with pytest.raises(ConfigError, match=r"data.cache.*'auto', 'memory', 'disk', 'off' or 'on'.*got 'maybe'"):
        load_config(None, ["data.cache=maybe"])
