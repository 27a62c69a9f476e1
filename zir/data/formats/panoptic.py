"""COCO panoptic (``panoptic``): a JSON of ``segments_info`` per image and a folder of PNGs.

Each PNG pixel holds a segment id encoded as ``R + 256 G + 256^2 B`` (0 = unlabelled); the JSON says which
category every segment id belongs to and whether the category is a *thing* (countable) or *stuff*.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zir.data.contract import DatasetIndex, Problem, Record
from zir.data.formats._common import box_problem, choose_image_root, missing_image
from zir.data.formats.coco import category_map, image_entry, image_table, load_json, xywh_to_xyxy
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
    annotations = {a.get("image_id"): a for a in data.get("annotations") or [] if isinstance(a, dict)}
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
