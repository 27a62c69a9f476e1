"""COCO instances JSON (detection, instance segmentation): reader and writers.

COCO boxes are ``[x, y, w, h]`` in absolute pixels; zir's are XYXY with exclusive ``x2, y2``, so
``x2 = x + w``. Category ids (any positive integers) become 0-based class ids in ascending id order;
the writer numbers categories ``1..C`` in class order.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval.core import mask as mask_codec

from zir.data.contract import DatasetIndex, Problem, Record
from zir.data.formats._common import (
    box_problem,
    check_finite,
    choose_image_root,
    copy_image,
    fmt_float,
    header_size,
    missing_image,
    output_names,
    prepare_output,
)
from zir.data.image_io import read_label_png
from zir.errors import DataError

# Annotation keys zir reads or rewrites; any other key is kept in ``Record.extra`` and written back.
_CORE_KEYS = {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"}


def load_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; raises DataError when the file is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"cannot parse JSON ({e}); fix or re-export the file") from e
    if not isinstance(data, dict):
        raise DataError(path, "expected a JSON object with 'images', 'annotations' and 'categories'")
    return data


def category_map(data: dict[str, Any], path: Path) -> tuple[dict[int, int], list[dict[str, Any]]]:
    """``{category id: 0-based class id}`` in ascending id order, and the categories in that order."""
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DataError(path, "no 'categories' list; a COCO file must name its classes")
    try:
        cats = sorted(cats, key=lambda c: int(c["id"]))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(path, "every category needs an integer 'id'") from e
    if not all("name" in c for c in cats):
        raise DataError(path, "every category needs a 'name'")
    return {int(c["id"]): i for i, c in enumerate(cats)}, cats


def image_table(data: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    images = data.get("images")
    if not isinstance(images, list):
        raise DataError(path, "no 'images' list; is this a COCO annotation file?")
    return images


def annotation_list(data: dict[str, Any], path: Path) -> list[Any]:
    """``data["annotations"]`` (missing or null: none); anything but a list is a DataError."""
    annotations = data.get("annotations")
    if annotations is None:
        return []
    if not isinstance(annotations, list):
        raise DataError(path, f"'annotations' must be a list, got {type(annotations).__name__}; fix the file")
    return annotations


def xywh_to_xyxy(bbox: Any) -> list[float] | None:
    """COCO ``[x, y, w, h]`` as ``[x1, y1, x2, y2]``, or ``None`` when it is not 4 numbers."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    return [x, y, x + w, y + h]


def image_entry(im: Any, k: int, path: Path, problems: list[Problem]) -> tuple[int, str] | None:
    """``(id, file_name)`` of the ``k``-th entry of a COCO ``images`` list, or ``None`` with a problem noted."""
    try:
        return int(im["id"]), str(im["file_name"])
    except (KeyError, TypeError, ValueError):
        problems.append(Problem(str(path), f"images[{k}]", "image entry needs an integer 'id' and a "
                                                           "'file_name'; fix the entry"))
        return None


def _has_segmentation(seg: Any) -> bool:
    return isinstance(seg, dict) or (isinstance(seg, list) and len(seg) > 0)


def read_coco(json_path: str | Path, image_root: str | Path | None = None) -> DatasetIndex:
    """Read a COCO instances JSON.

    Args:
        json_path: the annotation file.
        image_root: folder the ``file_name`` entries are relative to; by default the JSON's folder, its
            ``images/`` sub-folder or a sibling ``images/`` folder, whichever holds the images.

    Returns:
        A ``detect`` index, or ``instance`` when any annotation has a segmentation (polygons or RLE,
        kept as-is in ``Record.segmentations``).
    """
    path = Path(json_path)
    data = load_json(path)
    cat_to_class, cats = category_map(data, path)
    images = image_table(data, path)
    annotations = annotation_list(data, path)
    root = Path(image_root) if image_root is not None else choose_image_root(
        path.parent, (str(im.get("file_name", "")) for im in images if isinstance(im, dict)))
    instance = any(_has_segmentation(a.get("segmentation")) for a in annotations if isinstance(a, dict))
    problems: list[Problem] = []

    records: list[Record] = []
    by_id: dict[int, int] = {}  # COCO image id -> record index
    for k, im in enumerate(images):
        entry = image_entry(im, k, path, problems)
        if entry is None:
            continue
        image_id, file_name = entry
        if image_id in by_id:
            problems.append(Problem(str(path), f"image id {image_id}", "duplicate image id; ids must be "
                                                                       "unique", record=by_id[image_id]))
            continue
        image_path = root / file_name
        width, height = im.get("width"), im.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            width, height = header_size(image_path) or (None, None)
        rec = Record(path=image_path, image_id=image_id, width=width, height=height,
                     source=f"{path}:image {image_id}")
        by_id[image_id] = len(records)
        if not image_path.is_file():
            problems.append(missing_image(image_path, path, len(records)))
        records.append(rec)

    objects: list[list[tuple[list[float], int, bool, Any, dict[str, Any]]]] = [[] for _ in records]
    for k, ann in enumerate(annotations):
        ann = ann if isinstance(ann, dict) else {}
        where = f"annotation {ann.get('id', f'[{k}]')}"
        image_id, category_id = ann.get("image_id"), ann.get("category_id")
        r = by_id.get(image_id) if isinstance(image_id, int) else None
        if r is None:
            problems.append(Problem(str(path), where, f"refers to image id {image_id!r}, which "
                                                      "is not in 'images'; fix or remove the annotation"))
            continue
        rec = records[r]
        if not isinstance(category_id, int) or category_id not in cat_to_class:
            problems.append(Problem(str(path), where, f"unknown category id {category_id!r} (not "
                                                      "in 'categories'); fix or remove the annotation",
                                    record=r))
            continue
        box = xywh_to_xyxy(ann.get("bbox"))
        if box is None:
            problems.append(Problem(str(path), where, "'bbox' must be 4 numbers [x, y, w, h]", record=r))
            continue
        message = box_problem(box, rec.width, rec.height)
        if message:
            problems.append(Problem(str(path), where, message, record=r))
        seg = ann.get("segmentation")
        if not _has_segmentation(seg):
            seg = None
            if instance:
                problems.append(Problem(str(path), where, "no segmentation in an instance-segmentation "
                                                          "file; its mask will be empty", "warning",
                                        record=r))
        elif isinstance(seg, dict) and rec.height and list(seg.get("size", [])) != [rec.height, rec.width]:
            problems.append(Problem(str(path), where, f"RLE size {seg.get('size')} differs from the image "
                                                      f"size [{rec.height}, {rec.width}] (H, W)", record=r))
        extra = {key: v for key, v in ann.items() if key not in _CORE_KEYS}
        objects[r].append((box, cat_to_class[category_id], bool(ann.get("iscrowd", 0)), seg, extra))

    for rec, objs in zip(records, objects):
        if objs:
            rec.boxes = np.asarray([o[0] for o in objs], np.float32)
            rec.labels = np.asarray([o[1] for o in objs], np.int64)
            rec.iscrowd = np.asarray([o[2] for o in objs], bool)
            rec.difficult = np.zeros(len(objs), bool)
            rec.segmentations = [o[3] for o in objs] if instance else []
            rec.extra = [o[4] for o in objs]
    classes = [str(c["name"]) for c in cats]
    return DatasetIndex(records, classes, "instance" if instance else "detect", "coco", path.parent, problems)


# --------------------------------------------------------------------------------------------------
# Writing


def _rle(segmentation: Any, height: int, width: int) -> dict[str, Any]:
    """One COCO RLE for polygons, uncompressed or compressed RLE (areas are computed on RLE, not pixels)."""
    if isinstance(segmentation, list):
        return mask_codec.merge(mask_codec.frPyObjects([list(map(float, p)) for p in segmentation
                                                        if len(p) >= 6], height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_codec.frPyObjects(segmentation, height, width)
    rle = dict(segmentation)
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode("ascii")
    return rle


def write_coco_json(records: list[Record], classes: list[str], out_json: str | Path,
                    image_root: str | Path) -> Path:
    """Write records as a COCO instances JSON without copying images.

    ``file_name`` is each ``record.path`` relative to ``image_root``; ``record.width`` and ``height``
    must be set. Category ids are ``1..C`` in class order, annotation ids ``1..N``; image ids are the
    records' own when they are unique, else ``1..M``. Segmentations and ``extra`` fields are written
    back as read; ``area`` is the mask's area when there is a segmentation, else the box's.
    The file is deterministic (sorted keys, shortest float32 decimals).
    """
    out_json = Path(out_json)
    ids = [int(r.image_id) for r in records]
    if len(set(ids)) < len(ids):
        ids = list(range(1, len(records) + 1))
    images, annotations = [], []
    for image_id, rec in zip(ids, records):
        if not (rec.width and rec.height):
            raise DataError(rec.source, "record has no width/height; a COCO image entry needs them")
        check_finite(rec)
        W, H = int(rec.width), int(rec.height)
        images.append({"id": image_id, "file_name": Path(os.path.relpath(rec.path, image_root)).as_posix(),
                       "width": W, "height": H})
        for i, (box, label) in enumerate(zip(rec.boxes.tolist(), rec.labels.tolist())):
            x1, y1, x2, y2 = box
            ann: dict[str, Any] = dict(rec.extra[i]) if i < len(rec.extra) else {}
            ann.update(id=len(annotations) + 1, image_id=image_id, category_id=int(label) + 1,
                       bbox=[fmt_float(x1), fmt_float(y1), fmt_float(x2 - x1), fmt_float(y2 - y1)],
                       iscrowd=int(rec.iscrowd[i]) if i < len(rec.iscrowd) else 0,
                       area=fmt_float((x2 - x1) * (y2 - y1)))
            seg = rec.segmentations[i] if i < len(rec.segmentations) else None
            if _has_segmentation(seg):
                ann["segmentation"] = seg
                ann["area"] = float(mask_codec.area(_rle(seg, H, W)))
            annotations.append(ann)
    categories = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(classes)]
    data = {"images": images, "annotations": annotations, "categories": categories}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True, allow_nan=False)
    return out_json


def _instance_png_to_rle(rec: Record) -> list[Any]:
    """Per object the RLE of its id in an instance-id PNG (COCO has no PNG masks)."""
    ids = read_label_png(rec.mask_path)  # type: ignore[arg-type]
    out = []
    for s in rec.segments:
        rle = mask_codec.encode(np.asfortranarray((ids == s["id"]).astype(np.uint8)))
        out.append({"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")})
    return out


def write_coco(index: DatasetIndex, out_dir: str | Path, copy_images: bool = True,
               overwrite: bool = False) -> Path:
    """Write a standalone COCO dataset: ``out_dir/images/`` and ``out_dir/annotations.json``.

    Instance-id PNG masks become RLE segmentations. With ``copy_images=False`` no image is copied and
    ``file_name`` points back to the source images (relative to ``out_dir``).

    Returns:
        The path of ``annotations.json``.
    """
    if index.task not in ("detect", "instance"):
        raise DataError(index.root, f"a {index.task} dataset cannot be written as COCO instances; "
                                    "COCO holds detection and instance-segmentation data")
    out = prepare_output(out_dir, index, overwrite)
    records = []
    names = output_names([r.path for r in index.records])
    for rec, name in zip(index.records, names):
        new = replace(rec)  # a shallow copy: the index stays as it was read
        if not (new.width and new.height):
            new.width, new.height = header_size(rec.path) or (None, None)
        if index.task == "instance" and rec.mask_path is not None and not rec.segmentations:
            new.segmentations = _instance_png_to_rle(rec)
        if copy_images:
            new.path = out / "images" / name
            copy_image(rec.path, new.path, rec)
        records.append(new)
    image_root = out / "images" if copy_images else out
    return write_coco_json(records, index.classes, out / "annotations.json", image_root)
