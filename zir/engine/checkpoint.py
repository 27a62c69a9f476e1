"""Checkpoints: weights as safetensors with the config and class names inside; resume state beside them.

A run folder holds::

    runs/NAME/config.yaml
    runs/NAME/weights/best.safetensors      model weights + metadata (config, classes, task, epoch)
    runs/NAME/weights/last.safetensors
    runs/NAME/weights/last_state.pt         optimizer, scheduler, RNG, epoch: for --resume

Nothing is ever unpickled: weights load with safetensors and the resume state with
``torch.load(weights_only=True)``. Every file is written atomically (temporary file, then rename), so a
run killed at any moment leaves the previous checkpoint intact; files get the user's umask (as ``open``
would give them), not ``mkstemp``'s private 0600. A damaged file (truncated, overwritten, random bytes)
is a :class:`~zir.errors.CheckpointError` saying which file is damaged and which sibling is intact.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from zir.errors import CheckpointError

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: os.umask can only be read by setting it


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_last(weights_dir: Path, model: nn.Module, state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write ``last.safetensors`` and ``last_state.pt`` as a pair that resume can trust.

    Both go to temporary files first (the slow part) and are renamed one right after the other, so a
    run killed while writing keeps the previous epoch's pair, never a new state beside old weights.
    """
    weights_dir.mkdir(parents=True, exist_ok=True)
    tmps = []
    try:
        for name, write in (("last.safetensors", lambda tmp: _save_safetensors(model, tmp, meta)),
                            ("last_state.pt", lambda tmp: torch.save(state, tmp))):
            fd, tmp = tempfile.mkstemp(dir=weights_dir, prefix=f".{name}.", suffix=".tmp")
            os.close(fd)
            tmps.append((tmp, weights_dir / name))
            write(tmp)
            os.chmod(tmp, 0o666 & ~_UMASK)
        for tmp, path in tmps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in tmps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _save_safetensors(model: nn.Module, tmp: str, meta: dict[str, Any]) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, tmp, metadata={k: json.dumps(v) for k, v in meta.items()})


def save_weights(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """Write ``model``'s state dict and ``meta`` (JSON-encoded values) as one safetensors file."""
    atomic_write(path, lambda tmp: _save_safetensors(model, tmp, meta))


def _intact_sibling(path: Path) -> Path | None:
    """The other weights file of the run (best <-> last) if it reads, else ``None``."""
    other = {"best.safetensors": "last.safetensors", "last.safetensors": "best.safetensors"}.get(path.name)
    if other is None or not (path.parent / other).is_file():
        return None
    try:
        with safe_open(str(path.parent / other), framework="pt") as f:
            for k in f.keys():
                f.get_slice(k)
        load_file(str(path.parent / other))
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
    return path.parent / other


def _damaged(path: Path, e: BaseException) -> CheckpointError:
    """The error for a weights file that does not read: what is damaged, and what the user can do."""
    if not path.is_file():
        return CheckpointError(f"{path}: weights file not found")
    size = path.stat().st_size
    what = "is empty" if size == 0 else f"is damaged (truncated or overwritten: {size} bytes; {e})"
    sibling = _intact_sibling(path)
    hint = (f"{sibling} is intact: use it instead (e.g. zir eval {sibling})" if sibling is not None else
            "no intact weights beside it; train again, or restore the file from a backup")
    return CheckpointError(f"{path}: {what}; {hint}")


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata of a weights file (config, classes, task, epoch, metrics)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not a zir weights file (its metadata is not zir's JSON: {e})") from e
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _damaged(path, e) from e


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
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _damaged(path, e) from e
    state = rename_keys(state, renames or {})
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(expected[k].shape)})" for k, v in state.items()
             if k in expected and v.shape != expected[k].shape]
    # torch decides what is missing: a BatchNorm fills in a num_batches_tracked the file lacks (weights trained
    # with a frozen pretrained backbone, FrozenBatchNorm2d, load into a model built without pretrained weights)
    missing, unexpected = ([], []) if wrong else model.load_state_dict(state, strict=False)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not fit the model (missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"other shapes {wrong[:5]}); was it made by another model, other settings or another zir version? "
            "To convert a file of an older zir, map its names onto the model's (`model.state_dict()` keys): "
            "add the old -> new prefixes to the model's registry entry (ModelSpec.renames in zir/models/__init__.py), "
            "or rewrite the file with zir.engine.checkpoint.rename_keys and safetensors' save_file")


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict[str, Any]:
    """The resume state (optimizer, scheduler, RNG, epoch) written by :func:`save_last`.

    Raises:
        CheckpointError: when it is missing, or damaged (truncated, random bytes, not a dict with an
            ``epoch``); the message says that the weights of the last finished epoch may still be used.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: no resume state here; was the run started by zir train?")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError, KeyError, IndexError,
            AttributeError, TypeError, UnicodeDecodeError) as e:
        state = e
    if not isinstance(state, dict) or "epoch" not in state:
        last = path.with_name("last.safetensors")
        detail = f" ({state})" if isinstance(state, BaseException) else ""
        usable = (f"the weights of the last finished epoch may still be intact in {last}: evaluate or predict "
                  f"with them (zir eval {last}), or" if last.is_file() else "")
        raise CheckpointError(f"{path}: resume state is damaged (truncated or overwritten){detail}, so this "
                              f"run cannot be resumed; {usable} start a new run with the same config "
                              f"(zir train {path.parent.parent / 'config.yaml'})")
    return state


# --------------------------------------------------------------------------------------------------
# A run folder that never trained is removed


_F = TypeVar("_F", bound=Callable[..., Any])
_created_run: list[Path] = []  # the run folder the innermost train() call created, if any


def new_run_dir(run_dir: Path) -> Path:
    """Check that ``run_dir`` can be written (before any work) and remember whether this run creates it
    (see :func:`discard_untrained`); returns ``run_dir``."""
    from zir.data.output import check_writable

    check_writable(run_dir, "folder")
    if not run_dir.exists():
        _created_run.append(run_dir)
    return run_dir


def discard_untrained(train: _F) -> _F:
    """Decorate ``train``: when it fails (any error, Ctrl-C) before the first checkpoint of a run folder
    it created, remove that folder, which would hold only ``config.yaml`` and mislead ``zir eval``; when
    a checkpoint exists, say how to resume. A folder zir did not create (``exist_ok``) is never removed."""

    @functools.wraps(train)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        depth = len(_created_run)
        try:
            return train(*args, **kwargs)
        except BaseException as e:
            run_dir = _created_run[depth] if len(_created_run) > depth else None
            if run_dir is not None and not (run_dir / "weights" / "last_state.pt").is_file():
                shutil.rmtree(run_dir, ignore_errors=True)
                if isinstance(e, KeyboardInterrupt):
                    print(f"zir: interrupted before the first checkpoint; removed {run_dir}", file=sys.stderr)
            elif isinstance(e, KeyboardInterrupt):
                resume = run_dir or kwargs.get("resume")
                if resume is not None:
                    print(f"zir: interrupted; continue with: zir train --resume {resume}", file=sys.stderr)
            raise
        finally:
            del _created_run[depth:]

    return wrapper  # type: ignore[return-value]
