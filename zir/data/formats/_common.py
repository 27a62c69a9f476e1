"""Helpers shared by the readers and writers: finding files, checking boxes, preparing output folders."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from zir.data.contract import DatasetIndex, Problem, Record
from zir.data.image_io import image_size, is_image_file
from zir.data.output import check_writable
from zir.errors import DataError

BOX_TOLERANCE = 1.0
"""Pixels a box may stick out of its image before it is a problem (float rounding in exporters)."""


# --------------------------------------------------------------------------------------------------
# Finding files


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (sorted; hidden files skipped)."""
    if not folder.is_dir():
        return []
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def images_by_stem(folder: Path) -> dict[str, Path]:
    """``{stem: path}`` of the images directly in ``folder``; the first in sorted order wins a tie."""
    found: dict[str, Path] = {}
    for p in list_images(folder):
        found.setdefault(p.stem, p)
    return found


def find_subdir(root: Path, names: Sequence[str]) -> Path | None:
    """The first of ``root/name`` that is a folder, trying ``names`` in order."""
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def subdirs(root: Path) -> list[Path]:
    """Sub-folders of ``root`` (sorted, hidden ones skipped)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; raises DataError when it is not one."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DataError(path, f"cannot parse YAML ({e}); fix the syntax") from e
    if not isinstance(data, dict):
        raise DataError(path, "expected a YAML mapping (key: value lines); fix the file")
    return data


def names_list(names: Any, file: Path) -> list[str]:
    """Class names from a YAML ``names`` entry: a list, or a dict ``{id: name}`` with ids 0..C-1."""
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError) as e:
            raise DataError(file, "'names' keys must be class ids 0, 1, ...") from e
        if ids != list(range(len(ids))):
            raise DataError(file, f"'names' ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        return [str(names[k] if k in names else names[str(k)]) for k in ids]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise DataError(file, "'names' must be a non-empty list of class names (or a dict id: name)")


def choose_image_root(folder: Path, file_names: Iterable[str]) -> Path:
    """Where the images of an annotation JSON in ``folder`` are: ``folder``, ``folder/images`` or
    ``folder/../images``, whichever holds the first listed files (``folder`` if none does)."""
    probe = [n for _, n in zip(range(20), file_names)]
    for candidate in (folder, folder / "images", folder.parent / "images"):
        if any((candidate / n).is_file() for n in probe):
            return candidate
    return folder


def header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the image header, or ``None`` when the file is missing or unreadable."""
    try:
        return image_size(path)
    except DataError:
        return None


# --------------------------------------------------------------------------------------------------
# Checking annotations


def box_problem(box: Sequence[float], width: int | None, height: int | None) -> str | None:
    """What is wrong with one XYXY box (absolute pixels), or ``None`` when it is usable."""
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return "box has NaN or infinite coordinates; fix or remove the object"
    if x2 <= x1 or y2 <= y1:
        return f"box has zero or negative size ({x2 - x1:g} x {y2 - y1:g} px); fix or remove the object"
    if width and height:
        t = BOX_TOLERANCE
        if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
            return (f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] (XYXY) lies outside the {width}x{height} "
                    "image; fix or remove the object")
    return None


def missing_image(path: Path, listed_in: Path | str, record: int) -> Problem:
    return Problem(str(path), "", f"image file not found (listed in {listed_in}); restore it or remove "
                                  "its entry", record=record)


# --------------------------------------------------------------------------------------------------
# Writing


def prepare_output(out_dir: str | Path, index: DatasetIndex, overwrite: bool) -> Path:
    """Check that ``out_dir`` may receive a new dataset and create it.

    Refuses (DataError) a folder inside the source dataset, one that contains it, and a non-empty
    folder unless ``overwrite`` (then files are written over, nothing is deleted).
    """
    out = Path(out_dir).resolve()
    root = Path(index.root).resolve()
    if out == root or root in out.parents or out in root.parents:
        raise DataError(out, f"output folder overlaps the source dataset {root}; writers never touch "
                             "their input: choose a folder outside it")
    if any(out in Path(r.path).resolve().parents for r in index.records):
        raise DataError(out, "output folder contains source images; choose a folder outside the dataset")
    if out.exists() and not out.is_dir():
        raise DataError(out, "output path is a file; choose a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError(out, "output folder is not empty; choose an empty folder or pass overwrite=True "
                             "(--overwrite)")
    check_writable(out, "folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def output_names(paths: Sequence[Path], flat: bool = False) -> list[str]:
    """Unique file names for copies of ``paths``: relative to their common folder (POSIX separators),
    or with ``/`` replaced by ``_`` when ``flat`` (formats whose images sit in one folder)."""
    if not paths:
        return []
    parents = [str(Path(p).resolve().parent) for p in paths]
    common = Path(os.path.commonpath(parents))
    names = [Path(p).resolve().relative_to(common).as_posix() for p in paths]
    if flat:
        names = [n.replace("/", "_") for n in names]
        if len(set(names)) < len(names) or len({Path(n).stem for n in names}) < len(names):
            names = [f"{i:06d}_{n}" for i, n in enumerate(names)]  # same stem twice: make them unique
    return names


def copy_image(src: Path, dst: Path, record: Record) -> None:
    """Copy one image (with its timestamps), naming the record in the error when it is missing."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copy2(src, dst)
    except OSError as e:
        raise DataError(record.source, f"cannot copy image {src} ({e}); run `zir data check` on the "
                                       "source") from e


def record_size(record: Record) -> tuple[int, int]:
    """``(width, height)`` of a record: from the annotation, else the image header."""
    if record.width and record.height:
        return int(record.width), int(record.height)
    return image_size(record.path)


def check_finite(record: Record) -> None:
    """Writers refuse NaN boxes rather than writing invalid files."""
    if not np.isfinite(record.boxes).all():
        raise DataError(record.source, "box has NaN or infinite coordinates; run `zir data check` and "
                                       "fix the source, or convert with skip_bad")


def fmt_float(v: float) -> float:
    """The shortest decimal that reads back as the same float32 (no ``10.000000381`` noise in files)."""
    return float(str(np.float32(v)))
