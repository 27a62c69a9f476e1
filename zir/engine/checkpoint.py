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
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

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


def load_weights(model: nn.Module, path: Path) -> None:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read weights ({e})") from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}); was it made by another model or version?")


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no resume state here; was the run started by zir train?")
    return torch.load(path, map_location="cpu", weights_only=True)
