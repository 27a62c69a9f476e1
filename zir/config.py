"""Run configuration: plain frozen dataclasses, loadable from YAML and overridable with ``key=value``.

A run is described by one :class:`RunConfig`::

    model: convnet            # a name from zir.models.MODELS
    model_args: {width: 32}   # settings of that model's own config dataclass
    data: {path: shapes/, image_size: 64, ...}    # DataConfig
    train: {epochs: 10, lr: 0.003, ...}           # TrainConfig

Keys (the CLI's ``key=value``, the API's keyword arguments) mean one setting each; :func:`resolve_key`
is the one resolver:

* a dotted key addresses a section: ``data.val_split=0.1``, ``train.lr=1e-3``, ``model_args.width=16``
  (deeper for nested model configs: ``model_args.rpn.nms_iou=0.6``);
* ``data=PATH`` sets ``data.path``; ``model_args={width: 16}`` replaces the model's settings;
* a bare key names the one run, data, train or model setting of that name (``epochs=5``,
  ``batch_size=32``, ``transfer=finetune``). No name is used twice today; if one were, zir would stop and
  ask for the dotted key instead of choosing.

Values are parsed as YAML (``5``, ``1e-3``, ``true``, ``[1, 2]``). ``image_size`` has one place,
``data.image_size``; the model's config takes it from there (:func:`settle_image_size`). A loaded config
is never changed: derive another with :meth:`RunConfig.override`. Every checkpoint stores the whole
config, so a run folder needs nothing else.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from zir.errors import ConfigError

Settings = Mapping[str, Any] | Iterable[tuple[str, Any]]


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is fed to the model.

    Attributes:
        path: dataset folder or annotation file (any format ``zir.data.formats.open_dataset`` reads),
            or ``synth:TASK`` for built-in synthetic scenes generated in memory.
        format: ``auto`` or a reader name.
        val_path: a separate validation set; if empty, ``val_split`` of ``path`` is held out.
        val_split: fraction held out for validation when there is no ``val_path``.
        image_size: side in pixels the model sees (square resize for classification). The one place of
            this setting: the model config's ``image_size`` is filled from it (see
            :func:`settle_image_size`).
        batch_size: images per optimizer step and process, before accumulation.
        workers: data-loader worker processes (0 = load in the main process).
        augment: preset of ``zir.augment``: ``none``, ``light``, ``standard`` or ``heavy``.
        skip_bad: drop samples that fail the data checks (reported once) instead of stopping.
        synth_n: number of images when ``path`` is ``synth:TASK``.
        mosaic: probability of YOLOv4's mosaic (four training images tiled into one) for ``detect`` data.
        mosaic_off_epochs: the last this many epochs train without mosaic (YOLOv8's ``close_mosaic``).
        crop: ``segment`` only: train on random ``crop`` x ``crop`` windows of the images resized to
            ``image_size`` (validation sees whole images); 0 = whole images. A fully convolutional
            model then learns fine detail at ``image_size`` for the cost of ``crop``-sized steps.
        orientation: ``upright`` (photographs: augmentation flips left-right only) or ``any`` (microscopy,
            aerial images: augmentation also turns by random quarter turns; see ``zir.augment``).
    """

    path: str = ""
    format: str = "auto"
    val_path: str = ""
    val_split: float = 0.2
    image_size: int = 64
    batch_size: int = 32
    workers: int = 0
    augment: str = "none"
    skip_bad: bool = False
    synth_n: int = 1000
    mosaic: float = 0.0
    mosaic_off_epochs: int = 0
    crop: int = 0
    orientation: str = "upright"


@dataclass(frozen=True)
class TrainConfig:
    """How the model is optimised.

    Attributes:
        epochs: passes over the training set.
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9, Nesterov).
        lr: peak learning rate (after warm-up); the cosine schedule decays it to ``lr * final_lr``.
        weight_decay: decoupled weight decay (AdamW) or L2 (SGD); not applied to norms and biases.
        warmup_epochs: linear warm-up from ``lr * 0.01`` (fractions of an epoch allowed).
        final_lr: the schedule's end as a fraction of ``lr``.
        clip_grad: max gradient L2 norm (0 = off).
        accumulate: micro-batches per optimizer step.
        amp: mixed precision: ``none``, ``bf16`` (CPU with AMX, or CUDA) or ``fp16`` (CUDA only).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seeds data order, augmentation and initialisation.
        patience: stop after this many epochs without improvement of the monitored metric (0 = never).
        time: a training budget in minutes (0 = none): the epoch count is fitted to it from timed steps
            (``epochs`` is then ignored), so warm-up and cosine decay end on time; a budget too short for
            one epoch runs one epoch and says so (``zir.engine.budget``).
        time_limit: a hard stop in minutes (0 = none), checked before every step: the run ends within one
            step, an evaluation and a checkpoint of it.
        eval_every: evaluate every N epochs (the last epoch is always evaluated).
        threads: torch intra-op threads on the CPU (0 = torch's default).
        ema_decay: keep an exponential moving average of the weights (timm's ``ModelEmaV3``, updated
            after every optimizer step, its decay warmed up from 0 to this value) and evaluate and save
            the average instead of the raw weights (0 = off). Gradient fitting only: ``transfer=features``
            and closed-form models ignore it.
        channels_last: keep the model's 4-D weights in channels-last (NHWC) memory while training, as timm's
            ``--channels-last``: the convolutions then take oneDNN's NHWC kernels; the same function, to float
            rounding. Unset (``null``): the model's choice (``ZirModel.trains_channels_last``): on for the
            classifier's ``transfer=finetune`` (two epochs of clothing_small in 5 CPU minutes instead of
            one), off elsewhere. The anchor-free detector fits 38-40 epochs into 15 CPU minutes instead of
            29-31 with it (README, "anchor_free on raccoon"). Gradient fitting only.
    """

    epochs: int = 10
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    final_lr: float = 0.01
    clip_grad: float = 10.0
    accumulate: int = 1
    amp: str = "none"
    device: str = "auto"
    seed: int = 0
    patience: int = 0
    time: float = 0.0
    time_limit: float = 0.0
    eval_every: int = 1
    threads: int = 0
    ema_decay: float = 0.0
    channels_last: bool | None = None


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; stored in ``runs/NAME/config.yaml`` and in every checkpoint.

    Frozen: nothing changes a config after it is built. Derive a changed one with :meth:`override`, which
    resolves and checks its keys as a loaded config's are.

    Attributes:
        model: registry name (``zir models`` lists them).
        model_args: the user's settings of the model (e.g. ``{"width": 32}``), kept as written so that
            config.yaml stays plain YAML; :meth:`model_config` turns them into the model's typed config
            dataclass. On the command line a bare key that is a setting of the model goes here
            (``transfer=finetune``). Each config owns its dict (copied on building): change it only
            through :meth:`override` too.
        task: optional; when given, the data and the model must be of this task.
        name: run name; the run lives in ``project/name``.
        project: folder holding runs.
        exist_ok: reuse ``project/name`` instead of making ``name-2``, ``name-3``...
        data: see :class:`DataConfig`.
        train: see :class:`TrainConfig`.
    """

    model: str = "convnet"
    model_args: dict[str, Any] = field(default_factory=dict)
    task: str = ""
    name: str = "exp"
    project: str = "runs"
    exist_ok: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        """Build and check a config from its dict form (config.yaml, a checkpoint's metadata); missing
        keys take their defaults. Raises ConfigError for unknown keys and bad values."""
        d = dict(d)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        data = _section(DataConfig, d.pop("data", {}) or {}, "data")
        train = _section(TrainConfig, d.pop("train", {}) or {}, "train")
        model_args = copy.deepcopy(d.pop("model_args", {}) or {})  # nothing shared with the caller's dict
        if not isinstance(model_args, Mapping):
            raise ConfigError(f"model_args must be a mapping of model settings, got {model_args!r}")
        run = {f.name: _coerce(d[f.name], f, f.name) for f in fields(cls) if f.name in d}
        cfg = cls(data=data, train=train, model_args=settle_image_size(data, model_args), **run)
        validate(cfg)
        return cfg

    def override(self, settings: Settings) -> RunConfig:
        """A new config: this one with ``settings`` (``{"epochs": 5, "data.val_split": 0.1}`` or
        ``[("epochs", 5), ...]``) applied in order, each key resolved by :func:`resolve_key`. The one way
        to change a config; ``self`` is left as it was."""
        items = list(settings.items() if isinstance(settings, Mapping) else settings)
        model = str(next((v for k, v in reversed(items) if k == "model"), self.model))
        d = self.to_dict()
        for key, value in items:
            path = resolve_key(key, model)
            if path == ("data", "path") and isinstance(value, Mapping):
                raise ConfigError(f"{key}= takes a dataset path; give data settings one by one "
                                  "(data.val_split=0.1, batch_size=8)")
            _set_path(d, path, value)
        return RunConfig.from_dict(d)

    def model_config(self, num_classes: int) -> Any:
        """The model's typed config dataclass, built by ``zir.models.model_config`` from ``model_args``,
        the data's class count and ``data.image_size``."""
        from zir.models import model_config

        return model_config(self.model, num_classes, self.data.image_size, self.model_args)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def settle_image_size(data: DataConfig, model_args: Mapping[str, Any]) -> dict[str, Any]:
    """The one rule for ``image_size``: ``data.image_size`` is the side the model sees, and the model
    config's ``image_size`` field is always filled from it (``zir.models.model_config``), so it is not
    a model setting. Runs written before this rule may hold ``model_args.image_size``: equal to
    ``data.image_size`` it is dropped; a different value is refused with the fix, since one of the two
    would be silently ignored.

    Returns:
        ``model_args`` without ``image_size`` (a new dict).
    """
    args = dict(model_args)
    if "image_size" in args:
        if args["image_size"] != data.image_size:
            raise ConfigError(f"image_size is set twice: data.image_size={data.image_size} and model_args."
                              f"image_size={args['image_size']}; the model's input side is data.image_size "
                              f"alone: set image_size={args['image_size']} and remove model_args.image_size")
        del args["image_size"]
    return args


def validate(cfg: RunConfig) -> None:
    """Checks beyond each value's type, run on every config built from settings (:meth:`RunConfig.from_dict`:
    config.yaml, ``key=value`` overrides, checkpoints): the model exists and takes its settings (its own
    config builder judges them, nested sections too). Range checks of numeric settings belong here."""
    from zir.models import FROM_DATA, get_spec

    get_spec(cfg.model)  # an unknown model name, with the list of models
    for key in FROM_DATA:
        if key in cfg.model_args:
            raise ConfigError(f"model_args.{key}: {_FROM_DATA_HELP[key]}")
    # The model's own builder checks its settings (nested ones too); the class count is a placeholder.
    cfg.model_config(num_classes=1)
    if cfg.train.channels_last not in (None, True, False):
        raise ConfigError(f"train.channels_last must be true, false or null (the model's choice), got "
                          f"{cfg.train.channels_last!r}")
    check_ranges(cfg)


_FROM_DATA_HELP = {
    "num_classes": "the class count is taken from the data; remove it",
    "image_size": "the model's input side is data.image_size; set image_size=N (or data.image_size=N)",
}


def _section(cls: type, d: Mapping[str, Any], name: str) -> Any:
    if not isinstance(d, Mapping):
        raise ConfigError(f"{name} must be a mapping of settings, got {d!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(known)
    if unknown:
        raise ConfigError(f"unknown {name} keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**{k: _coerce(v, known[k], f"{name}.{k}") for k, v in d.items()})


def _coerce(value: Any, f: dataclasses.Field, key: str) -> Any:
    """Check a value against the field's default type (YAML gives ints where floats are meant)."""
    default = f.default if f.default is not dataclasses.MISSING else None
    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, (int, str)):
        try:
            return float(value)  # also "1e-3", which YAML 1.1 reads as a string
        except ValueError:
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if isinstance(default, (int, float, str)) and not isinstance(value, type(default)):
        if isinstance(default, str):
            return str(value)
        article = "an" if isinstance(default, int) else "a"
        raise ConfigError(f"{key} must be {article} {type(default).__name__}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# Keys: the one resolver, used by load_config, RunConfig.override, the CLI and the API

_RUN_KEYS = ("model", "task", "name", "project", "exist_ok")
_SECTIONS: dict[str, type] = {"data": DataConfig, "train": TrainConfig}


def resolve_key(key: str, model: str) -> tuple[str, ...]:
    """Where a user's key goes in a config's dict form, for a run of ``model``.

    ``"epochs"`` -> ``("train", "epochs")``, ``"data"`` -> ``("data", "path")``, ``"width"`` ->
    ``("model_args", "width")``, ``"model_args.rpn.nms_iou"`` -> ``("model_args", "rpn", "nms_iou")``.

    Raises:
        ConfigError: an unknown key (with the known ones), a section given without a key, or a bare key
            that names settings in two sections (asking for the dotted key).
    """
    from zir.models import FROM_DATA, model_keys

    parts = tuple(key.strip().split("."))
    if any(not p for p in parts):
        raise ConfigError(f"bad setting name {key!r}; write e.g. epochs=5 or data.image_size=64")
    head = parts[0]
    if len(parts) == 1:
        if head == "data":  # data=PATH, as in `yolo train data=...`
            return ("data", "path")
        if head == "model_args":
            return ("model_args",)
        if head == "train":
            raise ConfigError("train is a section: write train.KEY=VALUE (e.g. train.epochs=5)")
        if head in FROM_DATA and head not in DataConfig.__dataclass_fields__:
            raise ConfigError(f"{head}: {_FROM_DATA_HELP[head]}")
        found = [(head,)] if head in _RUN_KEYS else []
        found += [(s, head) for s, cls in _SECTIONS.items() if head in cls.__dataclass_fields__]
        found += [("model_args", head)] if head in model_keys(model) else []
        if len(found) > 1:
            names = " and ".join(".".join(p) for p in found)
            raise ConfigError(f"{head} names {names}; write the dotted key you mean "
                              f"(e.g. {'.'.join(found[0])}=...)")
        if not found:
            raise ConfigError(_unknown(key, model))
        return found[0]
    if head in _SECTIONS:
        if len(parts) != 2 or parts[1] not in _SECTIONS[head].__dataclass_fields__:
            raise ConfigError(_unknown(key, model))
        return parts
    if head == "model_args":
        if parts[1] in FROM_DATA:
            raise ConfigError(f"{key}: {_FROM_DATA_HELP[parts[1]]}")
        if parts[1] not in model_keys(model):
            raise ConfigError(_unknown(key, model))
        return parts  # deeper keys are checked by the model's config builder
    raise ConfigError(f"unknown setting {key!r}: {head!r} is not a section (data, train, model_args)")


def _unknown(key: str, model: str) -> str:
    """The message for a key that is no setting: the closest known keys, then all of them."""
    from zir.models import model_keys

    known = {"run": [*_RUN_KEYS, "model_args"], **{s: [f.name for f in fields(cls)] for s, cls in _SECTIONS.items()},
             f"model {model}": sorted(model_keys(model))}
    close = difflib.get_close_matches(key.split(".")[-1], [k for keys in known.values() for k in keys], n=3)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    listing = "; ".join(f"{section}: {', '.join(keys)}" for section, keys in known.items())
    return (f"unknown setting {key!r}: not a run, train or data setting, nor a setting of model {model!r}."
            f"{hint} Known: {listing} (see `zir train --help`)")


def _set_path(d: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set ``value`` at ``path`` in a config's dict form, making nested model_args mappings as needed."""
    target = d
    for i, p in enumerate(path[:-1]):
        if target.get(p) is None:
            target[p] = {}
        if not isinstance(target[p], dict):
            raise ConfigError(f"{'.'.join(path[:i + 1])} is {target[p]!r}, not a group of settings")
        target = target[p]
    target[path[-1]] = copy.deepcopy(value)  # later keys nest into it: the caller's mapping stays as given


def parse_override(item: str) -> tuple[str, Any]:
    """``"epochs=5"`` -> ``("epochs", 5)``: the value parsed as YAML (``1e-3``, ``true``, ``[1, 2]``)."""
    if "=" not in item:
        raise ConfigError(f"expected key=value, got {item!r} (e.g. epochs=5 or data.image_size=64)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml_mapping(path: Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file's top-level mapping of settings (a run config, a bench recipe), as written.

    Raises:
        ConfigError: naming the file: not there, not YAML, or not a mapping.
    """
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level "
                          "(model, data, train, model_args)")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | Settings | None = None) -> RunConfig:
    """Read a YAML config (optional) and apply overrides on top of it: ``key=value`` strings (the CLI)
    or a mapping / pairs of keys and values (the API)."""
    cfg = RunConfig()
    if path:
        p = Path(path)
        loaded = read_yaml_mapping(p, "config file")
        try:
            cfg = RunConfig.from_dict(loaded)
        except ConfigError as e:
            raise ConfigError(f"{p}: {e}") from None
    if isinstance(overrides, Mapping):
        items: list[tuple[str, Any]] = list(overrides.items())
    else:
        items = [parse_override(o) if isinstance(o, str) else o for o in overrides or []]
    return cfg.override(items) if items else cfg


# Valid ranges of the numeric settings: (low, high, low inclusive, high inclusive); None = unbounded.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "data.val_split": (0, 1, True, False),
    "data.image_size": (8, None, True, True),
    "data.batch_size": (1, None, True, True),
    "data.workers": (0, None, True, True),
    "data.synth_n": (1, None, True, True),
    "data.mosaic": (0, 1, True, True),
    "data.mosaic_off_epochs": (0, None, True, True),
    "data.crop": (0, None, True, True),
    "train.epochs": (1, None, True, True),
    "train.lr": (0, None, True, True),  # lr=0 is a way to record the initial weights
    "train.weight_decay": (0, None, True, True),
    "train.warmup_epochs": (0, None, True, True),
    "train.final_lr": (0, 1, True, True),
    "train.clip_grad": (0, None, True, True),
    "train.accumulate": (1, None, True, True),
    "train.seed": (0, None, True, True),
    "train.patience": (0, None, True, True),
    "train.time": (0, None, True, True),
    "train.time_limit": (0, None, True, True),
    "train.eval_every": (1, None, True, True),
    "train.threads": (0, None, True, True),
    "train.ema_decay": (0, 1, True, False),
}


def check_ranges(cfg: RunConfig) -> None:
    """Check every numeric setting against :data:`RANGES` (from :func:`validate`), so ``epochs=-1`` or
    ``batch_size=0`` stops at once with the valid range instead of training nothing or crashing later.

    Raises:
        ConfigError: naming the first setting out of range, its value and the valid range.
    """
    import math

    for key, (low, high, low_in, high_in) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (low is None or value > low or (low_in and value == low))
        ok = ok and (high is None or value < high or (high_in and value == high))
        if not ok:
            lo = "" if low is None else f"{low} {'<=' if low_in else '<'} "
            hi = "" if high is None else f" {'<=' if high_in else '<'} {high}"
            raise ConfigError(f"{key}={value!r} is out of range; valid: {lo}{name}{hi}")


def describe_settings() -> str:
    """Text listing every setting with its default, for ``--help``."""
    lines = []
    for prefix, cls in (("", RunConfig), ("data.", DataConfig), ("train.", TrainConfig)):
        for f in fields(cls):
            if f.name in ("data", "train"):
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            lines.append(f"  {prefix}{f.name}={default!r}")
    lines.append("  model settings: KEY=VALUE or model_args.KEY=VALUE (each model's own; `zir models` lists "
                 "the models)")
    return "\n".join(lines)
