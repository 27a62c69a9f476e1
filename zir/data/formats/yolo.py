"""YOLO (Ultralytics) detection and segmentation labels: reader and writer.

Layout: ``data.yaml`` (``path``, ``train``, ``val``, ``test``, ``names``), ``images/<split>/x.jpg`` and
``labels/<split>/x.txt``. Each label line is ``cls cx cy w h`` (a box) or ``cls x1 y1 x2 y2 ...`` (a
polygon), normalised to ``[0, 1]`` by the image's width and height. zir converts them to absolute
pixels, so the reader reads every image's size from its header.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from zir.data.contract import DatasetIndex, Problem, Record
from zir.data.formats._common import (
    box_problem,
    check_finite,
    copy_image,
    header_size,
    list_images,
    load_yaml,
    missing_image,
    names_list,
    output_names,
    prepare_output,
    record_size,
)
from zir.errors import DataError

YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml")


def find_data_yaml(folder: Path) -> Path | None:
    """``data.yaml`` in ``folder``, or the one YAML there with ``names`` and ``train`` keys."""
    for name in YAML_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = []
    for p in sorted(folder.glob("*.y*ml")):
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and "names" in data and "train" in data:
            found.append(p)
    return found[0] if len(found) == 1 else None


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _split_images(entry: Any, root: Path, yaml_path: Path, split: str) -> list[Path]:
    """Images of a split entry: a folder, a ``.txt`` list of image paths, or a list of those."""
    if isinstance(entry, list):
        return [p for e in entry for p in _split_images(e, root, yaml_path, split)]
    target = root / str(entry)
    if target.is_dir():
        return list_images(target, recursive=True)
    if target.is_file() and target.suffix == ".txt":
        images = []
        for line in target.read_text(encoding="utf-8").splitlines():
            if line.strip():
                p = Path(line.strip())
                images.append(p if p.is_absolute() else root / p)
        return images
    raise DataError(yaml_path, f"'{split}: {entry}' is neither a folder nor a .txt list under {root}; "
                               "fix the path in the YAML")


def _parse_line(line: str, num_classes: int, W: int, H: int) -> tuple[int, list[float], list[float] | None] | str:
    """``(class id, XYXY box, polygon or None)`` in absolute pixels, or a message saying what is wrong."""
    tokens = line.split()
    if len(tokens) != 5 and (len(tokens) < 7 or len(tokens) % 2 == 0):
        return (f"expected 'cls cx cy w h' or 'cls x1 y1 x2 y2 x3 y3 ...', got {len(tokens)} values; "
                "fix the line")
    try:
        cls_f = float(tokens[0])
        values = [float(t) for t in tokens[1:]]
    except ValueError:
        return "values must be numbers; fix the line"
    if not cls_f.is_integer() or not 0 <= cls_f < num_classes:
        return f"class id {tokens[0]} is not one of 0..{num_classes - 1} in 'names'; fix the line"
    if not all(math.isfinite(v) for v in values):
        return "box has NaN or infinite coordinates; fix or remove the line"
    if len(values) == 4:
        cx, cy, w, h = values
        box = [(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H]
        return int(cls_f), box, None
    xy = np.asarray(values, np.float64).reshape(-1, 2) * (W, H)
    box = [xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()]
    return int(cls_f), [float(v) for v in box], [float(v) for v in xy.reshape(-1)]


def read_yolo(path: str | Path, split: str = "train") -> DatasetIndex:
    """Read one split of a YOLO dataset.

    Args:
        path: the ``data.yaml`` file or the folder that holds it.
        split: the YAML key of the split (``train``, ``val`` or ``test``).

    Returns:
        A ``detect`` index, or ``instance`` when any label line is a polygon (kept in absolute pixels as
        the object's segmentation; its box is the polygon's bounds). An image without a label file has
        no objects.
    """
    path = Path(path)
    yaml_path = find_data_yaml(path) if path.is_dir() else path
    if yaml_path is None or not yaml_path.is_file():
        raise DataError(path, "no data.yaml found; a YOLO dataset needs one with 'train', 'val' and 'names'")
    data = load_yaml(yaml_path)
    if "names" not in data:
        raise DataError(yaml_path, "missing 'names' (the class names); add it")
    classes = names_list(data["names"], yaml_path)
    if data.get(split) is None:
        keys = [k for k in ("train", "val", "test") if data.get(k) is not None]
        raise DataError(yaml_path, f"no '{split}' entry; this file has {keys}: pass one of them as split")
    problems: list[Problem] = []
    root = yaml_path.parent
    if data.get("path"):
        given = Path(str(data["path"]))
        root = given if given.is_absolute() else yaml_path.parent / given
        if not root.is_dir():  # datasets move; Ultralytics' `path` often names another machine's folder
            problems.append(Problem(str(yaml_path), "path", f"folder {root} not found; using the YAML's "
                                                            "folder instead", "warning"))
            root = yaml_path.parent
    images = _split_images(data[split], root, yaml_path, split)

    records: list[Record] = []
    any_polygon = False
    for image in images:
        r = len(records)
        labels = label_path(image)
        size = header_size(image)
        rec = Record(path=image, image_id=r, width=size[0] if size else None,
                     height=size[1] if size else None, source=str(labels))
        records.append(rec)
        if not image.is_file():
            problems.append(missing_image(image, yaml_path, r))
            continue
        if size is None:
            problems.append(Problem(str(image), "", "cannot read the image header; re-export or remove the "
                                                    "image", record=r))
            continue
        if not labels.is_file():
            continue  # an image without a label file is a background image
        try:
            text = labels.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            problems.append(Problem(str(labels), "", f"cannot read label file ({e}); fix or remove it", record=r))
            continue
        boxes, cls, polygons = [], [], []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            parsed = _parse_line(line, len(classes), *size)
            if isinstance(parsed, str):
                problems.append(Problem(str(labels), f"line {n}", parsed, record=r))
                continue
            message = box_problem(parsed[1], *size)
            if message:
                problems.append(Problem(str(labels), f"line {n}", message, record=r))
            cls.append(parsed[0])
            boxes.append(parsed[1])
            polygons.append(None if parsed[2] is None else [parsed[2]])
            any_polygon |= parsed[2] is not None
        if boxes:
            rec.boxes, rec.labels = np.asarray(boxes, np.float32), np.asarray(cls, np.int64)
            rec.iscrowd, rec.difficult = np.zeros(len(boxes), bool), np.zeros(len(boxes), bool)
            rec.segmentations = polygons

    for r, rec in enumerate(records):
        if not any_polygon:
            rec.segmentations = []
        elif any(s is None for s in rec.segmentations):
            problems.append(Problem(rec.source, "", "box-only lines in a segmentation dataset: those objects "
                                                    "get empty masks; give them polygons", "warning", record=r))
    return DatasetIndex(records, classes, "instance" if any_polygon else "detect", "yolo", root, problems)


# --------------------------------------------------------------------------------------------------
# Writing


def _label_lines(rec: Record, W: int, H: int, polygons: bool) -> list[str]:
    lines = []
    for i, (box, cls) in enumerate(zip(rec.boxes.tolist(), rec.labels.tolist())):
        if i < len(rec.iscrowd) and rec.iscrowd[i]:
            continue  # a crowd region is not one object; Ultralytics' COCO converter drops them too
        seg = rec.segmentations[i] if polygons and i < len(rec.segmentations) else None
        if isinstance(seg, list) and len(seg) == 1 and len(seg[0]) >= 6:
            xy = np.asarray(seg[0], np.float64).reshape(-1, 2) / (W, H)
            lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in xy.reshape(-1)))
        else:  # boxes, and masks a single YOLO polygon cannot hold (several parts, RLE)
            x1, y1, x2, y2 = box
            cx, cy, w, h = (x1 + x2) / 2 / W, (y1 + y2) / 2 / H, (x2 - x1) / W, (y2 - y1) / H
            lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def write_yolo(index: DatasetIndex, out_dir: str | Path, split: str = "train",
               overwrite: bool = False) -> Path:
    """Write a standalone YOLO dataset: ``images/<split>/``, ``labels/<split>/`` and ``data.yaml``.

    Coordinates get 6 decimals (1/200 px on a 1000 px image). An ``instance`` index writes one-polygon
    objects as polygon lines and the others as boxes; crowd regions are left out. ``data.yaml`` has no
    ``path`` key, so both zir and Ultralytics read the dataset relative to the YAML wherever it moves.

    Returns:
        The path of ``data.yaml``.
    """
    if index.task not in ("detect", "instance"):
        raise DataError(index.root, f"a {index.task} dataset cannot be written as YOLO detection labels")
    out = prepare_output(out_dir, index, overwrite)
    names = output_names([r.path for r in index.records])
    for rec, name in zip(index.records, names):
        check_finite(rec)
        W, H = record_size(rec)
        image = out / "images" / split / name
        copy_image(rec.path, image, rec)
        lines = _label_lines(rec, W, H, polygons=index.task == "instance")
        label = label_path(image)
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    data = {split: f"images/{split}", "names": list(index.classes)}
    yaml_path = out / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return yaml_path
