"""Config: YAML + key=value overrides, the short forms, and errors for unknown keys."""

from __future__ import annotations

import pytest

from zir.config import RunConfig, load_config
from zir.errors import ConfigError


def test_overrides_short_and_dotted_forms():
    cfg = load_config(overrides=["data=shapes/", "epochs=5", "batch_size=8", "lr=1e-3", "model_args.width=16",
                                 "data.val_split=0.1", "amp=bf16", "skip_bad=true"])
    assert cfg.data.path == "shapes/" and cfg.train.epochs == 5 and cfg.data.batch_size == 8
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.model_args == {"width": 16} and cfg.data.val_split == 0.1
    assert cfg.train.amp == "bf16" and cfg.data.skip_bad is True


def test_model_settings_without_prefix_go_to_model_args():
    cfg = load_config(overrides=["model=convnet", "width=16", "task=classify"])
    assert cfg.model_args == {"width": 16} and cfg.task == "classify"


def test_yaml_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: convnet\ntrain: {epochs: 3, lr: 1}\ndata: {path: a/}\n")
    cfg = load_config(f, ["epochs=7"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 1.0 and cfg.data.path == "a/"


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(overrides=["data=x/", "model_args={width: 4}"])
    cfg.save(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("bad, message", [
    (["epochz=1"], "unknown setting"),
    (["model=convnet", "transfer=finetune"], "not a run, train or data setting"),
    (["train.nope=1"], "unknown setting"),
    (["epochs=many"], "must be an int"),
    (["skip_bad=3"], "true or false"),
    (["novalue"], "key=value"),
])
def test_bad_overrides(bad, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=bad)


def test_bad_yaml_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(f)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("override, message", [
    ("epochs=-1", "train.epochs=-1 is out of range; valid: 1 <= epochs"),
    ("image_size=0", "data.image_size=0 is out of range; valid: 8 <= image_size"),
    ("batch_size=0", "data.batch_size=0 is out of range; valid: 1 <= batch_size"),
    ("lr=-1", "train.lr=-1.0 is out of range; valid: 0 <= lr"),
    ("val_split=1", "data.val_split=1.0 is out of range; valid: 0 <= val_split < 1"),
    ("mosaic=2", "data.mosaic=2.0 is out of range; valid: 0 <= mosaic <= 1"),
])
def test_numeric_settings_are_range_checked_when_loaded(override, message):
    from zir.config import load_config
    from zir.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert str(e.value) == message
