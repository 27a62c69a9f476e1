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


def test_model_sections_from_dotted_keys_yaml_and_old_flat_names(tmp_path):
    """A model's config sections (``rpn``, ``roi_heads``...) can be set by dotted key, nested YAML or the old
    flat name; all reach the same place in the model's config (``zir.models.model_config``)."""
    from zir.models import model_config

    cfg = load_config(overrides=["model=faster_rcnn", "model_args.rpn.nms_iou=0.6", "box_hidden=32"])
    assert cfg.model_args == {"rpn": {"nms_iou": 0.6}, "box_hidden": 32}
    (tmp_path / "run.yaml").write_text("model: faster_rcnn\nmodel_args: {rpn: {nms_iou: 0.6}, roi_heads: {hidden: 32}}\n")
    from_yaml = load_config(tmp_path / "run.yaml", overrides={"model_args.rpn.batch_size": 128})
    given = {"model": "faster_rcnn", "model_args": {"rpn": {"nms_iou": 0.6}, "fpn_channels": 16}}
    from_api = load_config(overrides={**given, "model_args.rpn.batch_size": 128})
    assert given["model_args"] == {"rpn": {"nms_iou": 0.6}, "fpn_channels": 16}  # the caller's dicts are unchanged
    built = [model_config("faster_rcnn", 2, 64, c.model_args) for c in (cfg, from_yaml, from_api)]
    assert all(b.rpn.nms_iou == 0.6 for b in built) and built[0].roi_heads.hidden == built[1].roi_heads.hidden == 32
    assert built[1].rpn.batch_size == built[2].rpn.batch_size == 128 and built[2].fpn_channels == 16
    with pytest.raises(ConfigError, match=r"unknown setting.*'rpn.nms_id'.*'rpn' has"):
        load_config(overrides=["model=faster_rcnn", "model_args.rpn.nms_id=0.6"])
    with pytest.raises(ConfigError, match="given twice"):
        load_config(overrides=["model=faster_rcnn", "model_args.rpn.nms_iou=0.6", "rpn_nms_iou=0.5"])
