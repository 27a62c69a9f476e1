"""Folders of label PNGs: semantic class maps (``segment``) and instance-id maps (``instance``).

Layout: ``ROOT/images/x.jpg`` with ``ROOT/masks/x.png`` (or ``x_mask.png``); other common folder names
are found too (``image/`` + ``label/`` as in ISBI 2012, ``PNGImages/`` + ``PedMasks/`` as in
PennFudanPed). An optional ``ROOT/classes.yaml`` says what the values mean::

    type: semantic            # or instance
    names: [background, membrane]
    values: {0: 0, 255: 1}    # pixel value -> class id (semantic); 255 (unless mapped) = ignore

A mask value that maps to no class (neither in ``values`` nor a class id, nor 255) stops training with
a :class:`~zir.errors.DataError` naming the mask and the values: map them to a class or to 255.

Palette PNGs give their palette indices (``zir.data.image_io.read_label_png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from zir.data.contract import IGNORE_INDEX, DatasetIndex, Problem, Record
from zir.data.dataset import masks_to_boxes_np
from zir.data.formats._common import find_subdir, images_by_stem, load_yaml, names_list
from zir.data.image_io import read_label_png
from zir.errors import DataError

IMAGE_DIRS = ("images", "image", "img", "imgs", "PNGImages", "JPEGImages")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "PedMasks", "SegmentationClass")
INSTANCE_MASK_DIRS = ("PedMasks", "masks", "mask", "labels", "label", "SegmentationObject")
CLASSES_YAML = "classes.yaml"


def read_classes_yaml(root: Path) -> dict[str, Any]:
    """``ROOT/classes.yaml`` as a dict (empty when there is none)."""
    path = root / CLASSES_YAML
    return load_yaml(path) if path.is_file() else {}


def _folders(root: Path, images: str | Path | None, masks: str | Path | None,
             mask_dirs: tuple[str, ...]) -> tuple[Path, Path]:
    image_dir = root / images if images is not None else find_subdir(root, IMAGE_DIRS)
    mask_dir = root / masks if masks is not None else find_subdir(root, mask_dirs)
    if image_dir is None or not image_dir.is_dir():
        raise DataError(root, f"no image folder; expected one of {', '.join(IMAGE_DIRS)} (or pass images=)")
    if mask_dir is None or not mask_dir.is_dir():
        raise DataError(root, f"no mask folder; expected one of {', '.join(mask_dirs)} (or pass masks=)")
    return image_dir, mask_dir


def _pair(image_dir: Path, mask_dir: Path, problems: list[Problem]) -> list[Record]:
    """One record per image with its mask (``<stem>.png`` or ``<stem>_mask.png``); missing ones are problems."""
    masks = images_by_stem(mask_dir)
    used = set()
    records = []
    for stem, image in sorted(images_by_stem(image_dir).items()):
        mask = masks.get(stem) or masks.get(f"{stem}_mask")
        r = len(records)
        records.append(Record(path=image, image_id=r, mask_path=mask, source=str(mask or image)))
        if mask is None:
            problems.append(Problem(str(image), "", f"no mask in {mask_dir} ({stem}.png or {stem}_mask.png); "
                                                    "add it or remove the image", record=r))
        else:
            used.add(mask)
    for mask in sorted(set(masks.values()) - used):
        problems.append(Problem(str(mask), "", f"mask has no image in {image_dir}; it is not used", "warning"))
    return records


def _read_mask(rec: Record, r: int, problems: list[Problem]) -> np.ndarray | None:
    if rec.mask_path is None:
        return None
    try:
        values = read_label_png(rec.mask_path)
    except DataError as e:
        problems.append(Problem(str(rec.mask_path), "", e.detail, record=r))
        return None
    rec.height, rec.width = values.shape[:2]
    return values


def read_masks(root: str | Path, images: str | Path | None = None,
               masks: str | Path | None = None) -> DatasetIndex:
    """Read a folder of images and semantic label PNGs (``segment``).

    Without ``classes.yaml`` every mask is read once to find its values: only 0 and 255 means a binary
    set (``{0: background, 255: foreground}``), else the values are class ids ``class_0..class_K`` (255
    is ignored). With ``classes.yaml`` the masks are not read here.

    Args:
        root: the dataset folder.
        images, masks: the image and mask folders relative to ``root``, when not a common name.
    """
    root = Path(root)
    image_dir, mask_dir = _folders(root, images, masks, MASK_DIRS)
    problems: list[Problem] = []
    records = _pair(image_dir, mask_dir, problems)
    spec = read_classes_yaml(root)
    value_map: dict[int, int] | None = None
    if spec.get("names") is not None:
        classes = names_list(spec["names"], root / CLASSES_YAML)
        if spec.get("values") is not None:
            value_map = _value_map(spec["values"], len(classes), root / CLASSES_YAML)
    else:
        seen: set[int] = set()
        for r, rec in enumerate(records):
            values = _read_mask(rec, r, problems)
            if values is not None:
                seen.update(np.unique(values).tolist())
        if seen <= {0, 255}:
            classes, value_map = ["background", "foreground"], {0: 0, 255: 1}
        else:
            top = max(v for v in seen if v != IGNORE_INDEX)
            classes = [f"class_{i}" for i in range(top + 1)]
    return DatasetIndex(records, classes, "segment", "masks", root, problems, value_map=value_map)


def _value_map(values: Any, num_classes: int, file: Path) -> dict[int, int]:
    if not isinstance(values, dict):
        raise DataError(file, "'values' must map pixel values to class ids, e.g. {0: 0, 255: 1}")
    try:
        out = {int(k): int(v) for k, v in values.items()}
    except (TypeError, ValueError) as e:
        raise DataError(file, "'values' keys and values must be integers") from e
    bad = {k: v for k, v in out.items() if not (0 <= v < num_classes or v == IGNORE_INDEX)}
    if bad:
        raise DataError(file, f"'values' {bad} map to class ids outside 0..{num_classes - 1}; fix them")
    return out


def read_instance_masks(root: str | Path, images: str | Path | None = None,
                        masks: str | Path | None = None) -> DatasetIndex:
    """Read a folder of images and instance-id PNGs (``instance``), as PennFudanPed.

    In a mask, 0 is background and every other value one object (255 is VOC's void border, not an object,
    when it is the largest value and fewer than 255 ids are used). All objects get class 0; the class name comes from ``classes.yaml``
    (``names: [pedestrian]``), by default ``object``. Masks are read to find the objects and their boxes.
    """
    root = Path(root)
    image_dir, mask_dir = _folders(root, images, masks, INSTANCE_MASK_DIRS)
    problems: list[Problem] = []
    records = _pair(image_dir, mask_dir, problems)
    spec = read_classes_yaml(root)
    classes = names_list(spec["names"], root / CLASSES_YAML) if spec.get("names") is not None else ["object"]
    for r, rec in enumerate(records):
        ids = _read_mask(rec, r, problems)
        if ids is None:
            continue
        values = np.unique(ids)
        values = values[values != 0]
        if len(values) and values[-1] == 255 and len(values) < 255:
            values = values[:-1]
        rec.segments = [{"id": int(v), "category_id": 0} for v in values]
        rec.boxes = masks_to_boxes_np(ids[None] == values[:, None, None])
        rec.labels = np.zeros(len(values), np.int64)
        rec.iscrowd, rec.difficult = np.zeros(len(values), bool), np.zeros(len(values), bool)
    return DatasetIndex(records, classes, "instance", "instance-masks", root, problems)
