"""COCO panoptic (``panoptic``): a JSON of ``segments_info`` per image and a folder of PNGs.

Each PNG pixel holds a segment id encoded as ``R + 256 G + 256^2 B`` (0 = unlabelled); the JSON says which
category every segment id belongs to and whether the category is a *thing* (countable) or *stuff*.
Categories are written with ``id = class id + 1`` (COCO ids start at 1).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zir.data.contract import DatasetIndex, Problem, Record
from zir.data.formats._common import box_problem, choose_image_root, missing_image
from zir.data.formats.coco import (
    annotation_list,
    category_map,
    image_entry,
    image_table,
    load_json,
    xywh_to_xyxy,
)
from zir.data.image_io import save_png
from zir.errors import DataError


def read_coco_panoptic(json_path: str | Path, png_root: str | Path | None = None,
                       image_root: str | Path | None = None) -> DatasetIndex:
    """Read a COCO panoptic JSON with its PNG folder.

    Args:
        json_path: the panoptic JSON (``images``, ``annotations`` with ``file_name`` and
            ``segments_info``, ``categories`` with ``isthing``).
        png_root: folder of the panoptic PNGs; by default the folder named as the JSON's stem next to it
            (``panoptic_val2017.json`` -> ``panoptic_val2017/``).
        image_root: folder of the images; found as for COCO instances by default.

    Returns:
        Records with ``mask_path`` (the PNG), ``segments`` (category ids mapped to 0-based class ids)
        and ``boxes``/``labels`` of every segment, things and stuff; ``thing_classes`` per class.
    """
    path = Path(json_path)
    data = load_json(path)
    cat_to_class, cats = category_map(data, path)
    images = image_table(data, path)
    png_dir = Path(png_root) if png_root is not None else path.with_suffix("")
    if not png_dir.is_dir():
        raise DataError(png_dir, f"panoptic PNG folder not found (for {path.name}); pass png_root=")
    root = Path(image_root) if image_root is not None else choose_image_root(
        path.parent, (str(im.get("file_name", "")) for im in images if isinstance(im, dict)))
    annotations = {a.get("image_id"): a for a in annotation_list(data, path) if isinstance(a, dict)}
    problems: list[Problem] = []
    records: list[Record] = []
    for k, im in enumerate(images):
        entry = image_entry(im, k, path, problems)
        if entry is None:
            continue
        image_id, file_name = entry
        r = len(records)
        where = f"image {image_id}"
        width, height = im.get("width"), im.get("height")
        rec = Record(path=root / file_name, image_id=image_id, width=width, height=height,
                     source=f"{path}:{where}")
        records.append(rec)
        if not rec.path.is_file():
            problems.append(missing_image(rec.path, path, r))
        ann = annotations.get(image_id)
        if ann is None:
            problems.append(Problem(str(path), where, "image has no panoptic annotation; add one or remove "
                                                      "the image", record=r))
            continue
        rec.mask_path = png_dir / str(ann.get("file_name", Path(file_name).with_suffix(".png")))
        if not rec.mask_path.is_file():
            problems.append(Problem(str(rec.mask_path), "", f"panoptic PNG not found (listed in {path.name} "
                                                            f"for image {image_id}); restore it", record=r))
        boxes, labels = [], []
        for s in ann.get("segments_info") or []:
            seg_where = f"{where} segment {s.get('id')}"
            if s.get("category_id") not in cat_to_class:
                problems.append(Problem(str(path), seg_where, f"unknown category id {s.get('category_id')!r}"
                                                              "; fix or remove the segment", record=r))
                continue
            box = xywh_to_xyxy(s.get("bbox"))
            if box is None:
                problems.append(Problem(str(path), seg_where, "segment needs a 'bbox' [x, y, w, h]", record=r))
                continue
            message = box_problem(box, width, height)
            if message:
                problems.append(Problem(str(path), seg_where, message, record=r))
            rec.segments.append({**s, "category_id": cat_to_class[s["category_id"]]})
            boxes.append(box)
            labels.append(cat_to_class[s["category_id"]])
        if boxes:
            rec.boxes, rec.labels = np.asarray(boxes, np.float32), np.asarray(labels, np.int64)
            rec.iscrowd = np.asarray([bool(s.get("iscrowd", 0)) for s in rec.segments], bool)
            rec.difficult = np.zeros(len(boxes), bool)
    classes = [str(c["name"]) for c in cats]
    thing_classes = [bool(c.get("isthing", 1)) for c in cats]
    return DatasetIndex(records, classes, "panoptic", "coco-panoptic", path.parent, problems,
                        thing_classes=thing_classes)


# --------------------------------------------------------------------------------------------------
# Writing


def write_panoptic_png(ids: np.ndarray, path: str | Path) -> None:
    """Write an int ``(H, W)`` segment-id map as a COCO panoptic PNG (``id = R + 256 G + 256^2 B``)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 256**3:
        raise ValueError(f"panoptic segment ids must be in [0, 2^24), got {ids.min()}..{ids.max()}")
    save_png(np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8), path)


def segments_info(ids: np.ndarray, segments: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """COCO ``segments_info`` of the segments (``id``, 0-based ``category_id``) in an id map: the
    category id becomes COCO's (+1); ``bbox`` ``[x, y, w, h]`` and ``area`` come from the pixels."""
    ids = np.asarray(ids)
    out = []
    for s in segments:
        m = ids == int(s["id"])
        ys, xs = np.nonzero(m)
        bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)] \
            if len(xs) else [0, 0, 0, 0]
        out.append({"id": int(s["id"]), "category_id": int(s["category_id"]) + 1, "iscrowd": int(s.get("iscrowd", 0)),
                    "bbox": bbox, "area": int(m.sum())})
    return out


def panoptic_categories(classes: Sequence[str], thing_classes: Sequence[bool]) -> list[dict[str, Any]]:
    """COCO panoptic ``categories`` (``id = class id + 1``, ``isthing``)."""
    return [{"id": k + 1, "name": name, "isthing": int(thing), "supercategory": "thing" if thing else "stuff"}
            for k, (name, thing) in enumerate(zip(classes, thing_classes))]


def write_coco_panoptic(json_path: str | Path, images: Sequence[dict[str, Any]],
                        annotations: Sequence[dict[str, Any]], classes: Sequence[str],
                        thing_classes: Sequence[bool]) -> Path:
    """Write the panoptic JSON: ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
    (``image_id``, ``file_name`` of the PNG, ``segments_info``) and the categories; readable by
    :func:`read_coco_panoptic` and panopticapi."""
    json_path = Path(json_path)
    data = {"images": list(images), "annotations": list(annotations),
            "categories": panoptic_categories(classes, thing_classes)}
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True, allow_nan=False)
    return json_path
