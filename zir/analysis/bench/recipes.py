"""What the bench trains and how: registry detectors and their recipes.

A recipe is a run config file (``recipes/KIND/MODEL.yaml``, the format ``zir train CONFIG.yaml`` reads),
loaded with :func:`zir.config.load_config`; ``--set MODEL.KEY=VALUE`` overrides on top of it, and a
user's own file (``--recipe FILE``, naming its ``model``) replaces the shipped one. The reasons behind
each shipped recipe are comments in its file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zir.config import RunConfig, load_config, read_yaml_mapping
from zir.errors import ConfigError

RECIPES = Path(__file__).parent / "recipes"
# Kinds of data with their own recipes: "synth" (zir's synthetic shapes) and "photo" (real photographs).
KINDS = ("photo", "synth")
# Settings the bench sets itself (data, output folder, machine); left out of the table's settings column.
OWN_KEYS = ("model", "data", "path", "val_path", "project", "name", "exist_ok", "threads", "device")


@dataclass(frozen=True)
class Recipe:
    """How the bench trains one detector: a run config file plus ``--set`` overrides on it.

    Attributes:
        model: the registry name.
        path: the run config YAML (``model``, ``data``, ``train``, ``model_args`` sections).
        overrides: settings over the file, keys as on the command line (``lr``, ``S``, ``data.val_split``).
    """

    model: str
    path: Path
    overrides: dict[str, Any] = field(default_factory=dict)

    def config(self, **run: Any) -> RunConfig:
        """The run config: the file, then the overrides, then ``run`` (what the bench sets itself).

        Raises:
            ConfigError: naming the recipe file, for a setting no run, train, data or model section has.
        """
        try:
            return load_config(self.path, overrides={**self.overrides, **run, "model": self.model})
        except ConfigError as e:
            sets = " ".join(f"{self.model}.{k}={v}" for k, v in self.overrides.items())
            raise ConfigError(f"recipe {self.path} for {self.model}" + (f" with --set {sets}" if sets else "")
                              + f": {e}") from None

    def settings(self) -> dict[str, Any]:
        """What the recipe sets, as ``key=value`` of the command line: the file's, then the overrides."""
        return {k: v for k, v in {**_flat(read_yaml_mapping(self.path, "recipe file")), **self.overrides}.items() if k not in OWN_KEYS}

    def fixed_epochs(self) -> bool:
        """True if the recipe sets the epoch count (not 0); otherwise the time budget decides it."""
        return any(key.split(".")[-1] == "epochs" and value for key, value in self.settings().items())


def recipe_for(model: str, kind: str, overrides: Mapping[str, Any] | None = None,
               files: Mapping[str, Path] | None = None) -> Recipe:
    """The recipe of ``model`` on data of ``kind``: the user's file (``files``, by model), else the shipped
    ``recipes/KIND/MODEL.yaml``, else ``recipes/KIND/default.yaml``; with ``overrides`` on top."""
    if kind not in KINDS:
        raise ConfigError(f"data kind must be one of {KINDS}, got {kind!r}")
    path = (files or {}).get(model) or RECIPES / kind / f"{model}.yaml"
    if not path.is_file() and model not in (files or {}):
        path = RECIPES / kind / "default.yaml"
    return Recipe(model, Path(path), dict(overrides or {}))


def read_recipe_files(paths: Sequence[str | Path]) -> dict[str, Path]:
    """``{model: path}`` of a user's recipe files, each naming its registry detector (``model: NAME``)."""
    out: dict[str, Path] = {}
    for path in map(Path, paths):
        raw = read_yaml_mapping(path, "recipe file")
        model = raw.get("model")
        if not isinstance(model, str) or not model:
            raise ConfigError(f"{path}: a recipe names the detector it is for (e.g. `model: yolo_v1` at the top)")
        check_models([model])
        if model in out:
            raise ConfigError(f"{path}: a second recipe for {model} (the first: {out[model]}); give one per model")
        out[model] = path
    return out


def detectors() -> list[str]:
    """Every registry model of task ``detect``, in registry order."""
    from zir.models import MODELS

    return [name for name, spec in MODELS.items() if spec.task == "detect"]


def check_models(models: Sequence[str]) -> list[str]:
    """``models`` if each is a registered detector, else a :class:`ConfigError` naming the bad one."""
    from zir.models import MODELS

    known = detectors()
    for name in models:
        if name not in MODELS:
            raise ConfigError(f"unknown model {name!r}; detectors in the registry: {', '.join(known)}")
        if MODELS[name].task != "detect":
            raise ConfigError(f"{name!r} is a {MODELS[name].task} model, not a detector; detectors: "
                              f"{', '.join(known)}")
    return list(models)


def parse_sets(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["yolo_v1.lr=1e-3", "faster_rcnn.image_size=256"]`` -> ``{"yolo_v1": {"lr": 0.001}, ...}``
    (values parsed as YAML, keys as in ``zir train``)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        model, dot, name = key.strip().partition(".")
        if not (eq and dot and model and name):
            raise ConfigError(f"--set expects MODEL.KEY=VALUE (e.g. yolo_v1.lr=1e-3), got {item!r}")
        try:
            out.setdefault(model, {})[name] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            out.setdefault(model, {})[name] = value
    return out


def _flat(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``{"data": {"image_size": 256}, "model_args": {"S": 8}}`` -> ``{"image_size": 256, "S": 8}``: the
    keys of the ``data``, ``train`` and ``model_args`` sections as the command line spells them."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("data", "train", "model_args") and isinstance(value, dict):
            out.update(value)
        else:
            out[key] = value
    return out
