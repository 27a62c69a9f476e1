"""Config: YAML + key=value overrides, the one key resolver, image_size in one place, no mutation."""

from __future__ import annotations

import copy
import dataclasses
import re
import shlex
from pathlib import Path

import pytest

import zir
from zir.config import RunConfig, load_config, parse_override, resolve_key
from zir.errors import ConfigError
from zir.models import MODELS, ModelSpec

ROOT = Path(__file__).parent.parent
FIXTURE_RUNS = ROOT / "tests" / "fixtures" / "runs"


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
    # The model named later in the list decides what a bare key means.
    assert load_config(overrides=["transfer=finetune", "model=classifier"]).model_args == {"transfer": "finetune"}


@pytest.mark.parametrize("key, model, path", [
    ("epochs", "convnet", ("train", "epochs")),
    ("batch_size", "convnet", ("data", "batch_size")),
    ("image_size", "faster_rcnn", ("data", "image_size")),  # every model has image_size: it follows data
    ("data", "convnet", ("data", "path")),
    ("name", "convnet", ("name",)),
    ("model_args", "convnet", ("model_args",)),
    ("width", "convnet", ("model_args", "width")),
    ("transfer", "efficientnet_lite0", ("model_args", "transfer")),
    ("roi_batch_size", "faster_rcnn", ("model_args", "roi_batch_size")),
    ("train.lr", "convnet", ("train", "lr")),
    ("data.val_split", "convnet", ("data", "val_split")),
    ("model_args.width", "convnet", ("model_args", "width")),
])
def test_resolve_key(key, model, path):
    assert resolve_key(key, model) == path


@dataclasses.dataclass
class _Head:
    depth: int = 1


@dataclasses.dataclass
class _ClashConfig:
    """A model config with a setting named like a training one, to see that zir does not choose."""

    num_classes: int = 2
    image_size: int = 32
    lr: float = 0.1
    head: _Head = dataclasses.field(default_factory=_Head)  # a nested section, as the two-stage detectors'


@pytest.fixture
def clash_model(monkeypatch):
    monkeypatch.setitem(MODELS, "clash", ModelSpec("classify", _ClashConfig, lambda cfg: None, "test only"))
    return "clash"


def test_a_bare_key_in_two_sections_asks_for_the_dotted_key(clash_model):
    with pytest.raises(ConfigError, match=r"lr names train\.lr and model_args\.lr; write the dotted key"):
        load_config(overrides=["model=clash", "lr=0.5"])
    cfg = load_config(overrides=["model=clash", "train.lr=0.5", "model_args.lr=0.25", "model_args.head.depth=2"])
    assert cfg.train.lr == 0.5 and cfg.model_args == {"lr": 0.25, "head": {"depth": 2}}
    assert cfg.model_config(num_classes=3) == _ClashConfig(num_classes=3, image_size=64, lr=0.25, head=_Head(depth=2))


def test_unknown_key_names_the_closest_and_lists_the_known_ones():
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["model=convnet", "epochz=3"])
    message = str(e.value)
    assert "unknown setting 'epochz'" in message and "Did you mean epochs" in message
    for known in ("train: epochs, optimizer, lr", "data: path, format", "run: model", "model convnet: depth"):
        assert known in message  # the run's keys, each section's and the model's own


def test_no_readme_command_uses_an_ambiguous_or_unknown_key():
    """Every `zir train ... key=value` of the README loads; a bare key meaning two things would fail here."""
    commands = re.findall(r"zir train ([^`#\n]*)", (ROOT / "README.md").read_text())
    settings = [[t for t in shlex.split(c) if re.fullmatch(r"[a-z_.]+=\S+", t) and t != "key=value"]
                for c in commands]
    settings = [s for s in settings if s]
    assert len(settings) >= 10
    for overrides in settings:
        cfg = load_config(overrides=overrides)
        assert cfg.data.path, overrides
    # and every bare key of the run, data and train sections means one setting for every registry model
    keys = ["model", "task", "name", "project", "exist_ok", *(f.name for f in dataclasses.fields(RunConfig().data)),
            *(f.name for f in dataclasses.fields(RunConfig().train))]
    for model in MODELS:
        for key in keys:
            assert len(resolve_key(key, model)) <= 2


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


@pytest.mark.parametrize("run", ["mask_rcnn_v0", "panoptic_fpn_v0"])
def test_old_config_yaml_loads(run, tmp_path):
    """Runs written before image_size had one place stored it twice (equal): it loads, once."""
    cfg = load_config(FIXTURE_RUNS / run / "config.yaml")
    assert cfg.model == run.removesuffix("_v0") and "image_size" not in cfg.model_args
    assert cfg.model_args["fpn_channels"] == 8 and cfg.data.image_size == 64
    assert cfg.model_config(num_classes=6).image_size == 64
    cfg.save(tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_image_size_has_one_place(tmp_path):
    cfg = load_config(overrides=["model=faster_rcnn", "image_size=320"])
    assert cfg.data.image_size == 320 and cfg.model_config(num_classes=2).image_size == 320
    with pytest.raises(ConfigError, match="model's input side is data.image_size"):
        load_config(overrides=["model=faster_rcnn", "model_args.image_size=96"])
    f = tmp_path / "two.yaml"
    f.write_text("model: convnet\nmodel_args: {image_size: 96}\ndata: {image_size: 64}\n")
    with pytest.raises(ConfigError, match=r"two.yaml: image_size is set twice.*set image_size=96"):
        load_config(f)
    with pytest.raises(ConfigError, match="class count is taken from the data"):
        load_config(overrides=["num_classes=3"])


def test_a_config_is_never_changed_only_derived():
    cfg = load_config(overrides=["data=synth:classify", "model_args={width: 8}"])
    before = copy.deepcopy(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.path = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model_args = {}  # type: ignore[misc]
    derived = cfg.override({"epochs": 2, "width": 4, "data.val_split": 0.5})
    assert cfg == before
    assert (derived.train.epochs, derived.model_args, derived.data.val_split) == (2, {"width": 4}, 0.5)
    derived.model_args["width"] = 5  # even a dict inside is the derived config's own
    assert cfg.model_args == {"width": 8}


def test_training_leaves_the_given_config_as_it_was(tmp_path):
    """data=synth is resolved to synth:TASK for the run (and saved so), without touching the caller's config."""
    cfg = load_config(overrides=["data=synth", "task=classify", "synth_n=12", "image_size=32", "batch_size=8",
                                 "epochs=1", "threads=1", "model_args={width: 4, depth: 1}", f"project={tmp_path}"])
    before = copy.deepcopy(cfg)
    result = zir.train(cfg, progress=False)
    assert cfg == before and cfg.data.path == "synth"
    assert load_config(result.run_dir / "config.yaml").data.path == "synth:classify"
    result = zir.train(cfg, epochs=1, name="again", progress=False)  # API settings over a RunConfig
    assert cfg == before and result.run_dir.name == "again"


@pytest.mark.parametrize("bad, message", [
    (["epochz=1"], "unknown setting"),
    (["model=convnet", "transfer=finetune"], "not a run, train or data setting"),
    (["train.nope=1"], "unknown setting"),
    (["data.path.x=1"], "unknown setting"),
    (["nope.lr=1"], "not a section"),
    (["train=1"], "train is a section"),
    (["model=convnt"], "unknown model 'convnt'"),
    (["model_args.wdth=1"], "wdth"),
    (["data={batch_size: 2}"], "takes a dataset path"),
    (["epochs=many"], "must be an int"),
    (["skip_bad=3"], "true or false"),
    (["novalue"], "key=value"),
])
def test_bad_overrides(bad, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=bad)


def test_parse_override_reads_values_as_yaml():
    assert parse_override("lr=1e-3") == ("lr", "1e-3")  # YAML 1.1: a string; the float field converts it
    assert parse_override(" width =[1, 2]") == ("width", [1, 2])
    assert parse_override("name=") == ("name", "")


def test_bad_yaml_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(f)
    f.write_text("train: {epochz: 1}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown train keys \['epochz'\]"):
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
    with pytest.raises(ConfigError, match=r"no settings \['rpn.nms_id'\].*'rpn' has"):
        load_config(overrides=["model=faster_rcnn", "model_args.rpn.nms_id=0.6"])
    with pytest.raises(ConfigError, match="given twice"):
        load_config(overrides=["model=faster_rcnn", "model_args.rpn.nms_iou=0.6", "rpn_nms_iou=0.5"])


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
