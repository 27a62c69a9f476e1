"""Run configuration: plain dataclasses, loadable from YAML and overridable with ``key=value``.

A run is described by one :class:`RunConfig`::

    model: convnet            # a name from zir.models.MODELS
    model_args: {width: 32}   # fields of that model's own config dataclass
    data: {path: shapes/, image_size: 64, ...}    # DataConfig
    train: {epochs: 10, lr: 0.003, ...}           # TrainConfig

On the command line, ``data=PATH`` sets ``data.path``; a key without a dot is looked up in the run,
then in ``train``, then in ``data`` (``epochs=5``, ``batch_size=32``); dotted keys address a section
(``model_args.width=16``, ``data.val_split=0.1``). Values are parsed as YAML (``5``, ``1e-3``, ``true``,
``[1, 2]``). Every checkpoint stores the whole config, so a run folder needs nothing else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from zir.errors import ConfigError


@dataclass
class DataConfig:
    """Where the data is and how it is fed to the model.

    Attributes:
        path: dataset folder or annotation file (any format ``zir.data.formats.open_dataset`` reads),
            or ``synth:TASK`` for built-in synthetic scenes generated in memory.
        format: ``auto`` or a reader name.
        val_path: a separate validation set; if empty, ``val_split`` of ``path`` is held out.
        val_split: fraction held out for validation when there is no ``val_path``.
        image_size: side in pixels the model sees (square resize for classification).
        batch_size: images per optimizer step and process, before accumulation.
        workers: data-loader worker processes (0 = load in the main process).
        augment: preset of ``zir.augment``: ``none``, ``light``, ``standard`` or ``heavy``.
        skip_bad: drop samples that fail the data checks (reported once) instead of stopping.
        synth_n: number of images when ``path`` is ``synth:TASK``.
        mosaic: probability of YOLOv4's mosaic (four training images tiled into one) for ``detect`` data.
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
    crop: int = 0
    orientation: str = "upright"


@dataclass
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
        time_limit: stop after the epoch that passes this many minutes (0 = none).
        eval_every: evaluate every N epochs (the last epoch is always evaluated).
        threads: torch intra-op threads on the CPU (0 = torch's default).
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
    time_limit: float = 0.0
    eval_every: int = 1
    threads: int = 0


@dataclass
class RunConfig:
    """Everything that defines a run; stored in ``runs/NAME/config.yaml`` and in every checkpoint.

    Attributes:
        model: registry name (``zir models`` lists them).
        model_args: fields of the model's config dataclass (e.g. ``{"width": 32}``). On the command
            line a key that is not a run, train or data setting goes here (``transfer=finetune``).
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
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        data = _section(DataConfig, d.pop("data", {}) or {}, "data")
        train = _section(TrainConfig, d.pop("train", {}) or {}, "train")
        return cls(data=data, train=train, **d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _section(cls: type, d: dict[str, Any], name: str) -> Any:
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


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config (optional) and apply ``key=value`` overrides on top of it."""
    d: dict[str, Any] = RunConfig().to_dict()
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e})") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping of settings at the top level")
        _merge(d, loaded)
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides or [])
    for key, value in items:
        _set(d, key, value)
    cfg = RunConfig.from_dict(d)
    _check_model_args(cfg)
    validate(cfg)
    return cfg


# Valid ranges of the numeric settings: (low, high, low inclusive, high inclusive); None = unbounded.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "data.val_split": (0, 1, True, False),
    "data.image_size": (8, None, True, True),
    "data.batch_size": (1, None, True, True),
    "data.workers": (0, None, True, True),
    "data.synth_n": (1, None, True, True),
    "data.mosaic": (0, 1, True, True),
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
    "train.time_limit": (0, None, True, True),
    "train.eval_every": (1, None, True, True),
    "train.threads": (0, None, True, True),
}


def validate(cfg: RunConfig) -> None:
    """Check every numeric setting against :data:`RANGES` when a config is loaded, so ``epochs=-1`` or
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


def _check_model_args(cfg: RunConfig) -> None:
    from zir.models import MODELS

    if cfg.model not in MODELS:
        return  # reported with the list of models when the run starts
    known = {f.name for f in fields(MODELS[cfg.model].config)}
    unknown = set(cfg.model_args) - known
    if unknown:
        raise ConfigError(f"unknown setting(s) {sorted(unknown)}: not a run, train or data setting, nor a "
                          f"setting of model {cfg.model!r} ({', '.join(sorted(known))}); see `zir train --help`")


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and k != "model_args":
            _merge(dst[k], v)
        else:
            dst[k] = v


def _split(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"expected key=value, got {item!r} (e.g. epochs=5 or data.image_size=64)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set(d: dict[str, Any], key: str, value: Any) -> None:
    if key == "data" and not isinstance(value, dict):  # data=PATH, as in `yolo train data=...`
        d["data"]["path"] = str(value)
        return
    parts = key.split(".")
    if len(parts) == 1:
        for section in (d, d["train"], d["data"]):
            if key in section and not (section is d and key in ("data", "train")):
                section[key] = value
                return
        d["model_args"][key] = value  # a model setting; checked against the model's config below
        return
    target = d
    for p in parts[:-1]:
        if p not in target or not isinstance(target[p], dict):
            raise ConfigError(f"unknown setting {key!r}: {p!r} is not a section")
        target = target[p]
    if parts[0] != "model_args" and parts[-1] not in target:
        raise ConfigError(f"unknown setting {key!r}; see `zir train --help` for the list")
    target[parts[-1]] = value


def describe_settings() -> str:
    """Text listing every setting with its default, for ``--help``."""
    lines = []
    for prefix, cls in (("", RunConfig), ("data.", DataConfig), ("train.", TrainConfig)):
        for f in fields(cls):
            if f.name in ("data", "train"):
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            lines.append(f"  {prefix}{f.name}={default!r}")
    return "\n".join(lines)
