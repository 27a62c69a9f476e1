"""Checkpoints: weights as safetensors with the config and class names inside; resume state beside them.

A run folder holds::

    runs/NAME/config.yaml
    runs/NAME/weights/best.safetensors      model weights + metadata (config, classes, task, epoch)
    runs/NAME/weights/last.safetensors
    runs/NAME/weights/last_state.pt         optimizer, scheduler, RNG, epoch: for --resume

Nothing is ever unpickled: weights load with safetensors and the resume state with
``torch.load(weights_only=True)``. Every file is written atomically (temporary file, then rename), so a
run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from zir.errors import CheckpointError


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_weights(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """Write ``model``'s state dict and ``meta`` (JSON-encoded values) as one safetensors file."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {k: json.dumps(v) for k, v in meta.items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata of a weights file (config, classes, task, epoch, metrics)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a zir weights file ({e})") from e


def rename_keys(state: Mapping[str, Tensor], renames: Mapping[str, str]) -> dict[str, Tensor]:
    """``state`` with every key that starts with an old prefix given the new one (``{"mask_head.": "heads.mask."}``:
    ``mask_head.convs.0.weight`` -> ``heads.mask.convs.0.weight``); other keys unchanged."""
    out = {}
    for key, value in state.items():
        old = next((o for o in renames if key.startswith(o)), None)
        out[renames[old] + key[len(old):] if old is not None else key] = value
    return out


def load_weights(model: nn.Module, path: Path, renames: Mapping[str, str] | None = None) -> None:
    """Load a weights file into ``model``, mapping the parameter names of an older zir with ``renames``
    (old prefix -> new, the registry entry's ``ModelSpec.renames``).

    Raises:
        CheckpointError: the file cannot be read, or its tensors do not fit the model even after renaming.
    """
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read weights ({e})") from e
    state = rename_keys(state, renames or {})
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(expected[k].shape)})" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"other shapes {wrong[:5]}); was it made by another model, other settings or another zir version? "
            "To convert a file of an older zir, map its names onto the model's (`model.state_dict()` keys): "
            "add the old -> new prefixes to the model's registry entry (ModelSpec.renames in zir/models/__init__.py), "
            "or rewrite the file with zir.engine.checkpoint.rename_keys and safetensors' save_file")
    model.load_state_dict(state)


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no resume state here; was the run started by zir train?")
    return torch.load(path, map_location="cpu", weights_only=True)
