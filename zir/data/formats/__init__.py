"""Readers and writers of the dataset formats zir speaks; the only place where formats are converted.

``open_dataset(path)`` detects the format of a folder or annotation file and returns a
:class:`~zir.data.contract.DatasetIndex`. Readers are lenient: a bad record is reported in
``DatasetIndex.problems`` (``zir data check`` lists them all); only a file that cannot be parsed at all
raises :class:`~zir.errors.DataError`. Readers never modify their input.

Formats (``format`` name: layout -> task):

* ``imagefolder``: ``ROOT/<class>/*.jpg`` -> classify
* ``coco``: instances JSON + images -> detect, or instance when there are segmentations
* ``yolo``: ``data.yaml`` + ``images/<split>/`` + ``labels/<split>/*.txt`` -> detect, or instance
* ``voc``: ``Annotations/*.xml`` + ``JPEGImages/`` -> detect
* ``masks``: ``images/`` + ``masks/`` label PNGs (optional ``classes.yaml``) -> segment
* ``instance-masks``: ``images/`` + object-id PNGs (``PedMasks/`` or ``type: instance``) -> instance
* ``coco-panoptic``: panoptic JSON + its PNG folder + images -> panoptic

Writers (``write_coco``, ``write_yolo``, ``write_voc``) make a standalone copy in a new folder.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zir.data.contract import DatasetIndex
from zir.data.formats._common import find_subdir, list_images, subdirs
from zir.data.formats.coco import read_coco, write_coco, write_coco_json
from zir.data.formats.imagefolder import SPLIT_NAMES, read_imagefolder
from zir.data.formats.masks import (
    IMAGE_DIRS,
    INSTANCE_MASK_DIRS,
    MASK_DIRS,
    read_classes_yaml,
    read_instance_masks,
    read_masks,
)
from zir.data.formats.panoptic import read_coco_panoptic
from zir.data.formats.voc import ANNOTATION_DIRS, read_voc, write_voc
from zir.data.formats.yolo import find_data_yaml, read_yolo, write_yolo
from zir.data.image_io import is_image_file
from zir.errors import ConfigError, DataError

__all__ = ["FORMATS", "READERS", "detect_format", "open_dataset", "read_coco", "read_coco_panoptic",
           "read_imagefolder", "read_instance_masks", "read_masks", "read_voc", "read_yolo", "write_coco",
           "write_coco_json", "write_voc", "write_yolo"]

READERS: dict[str, Callable[..., DatasetIndex]] = {
    "imagefolder": read_imagefolder,
    "coco": read_coco,
    "yolo": read_yolo,
    "voc": read_voc,
    "masks": read_masks,
    "instance-masks": read_instance_masks,
    "coco-panoptic": read_coco_panoptic,
}
FORMATS: tuple[str, ...] = tuple(READERS)

LAYOUTS = """zir understands:
  COCO          a .json file, or a folder with annotations.json / instances*.json (also in annotations/)
  COCO panoptic a panoptic*.json with a PNG folder of the same name
  YOLO          a folder with data.yaml, images/<split>/ and labels/<split>/
  Pascal VOC    a folder with Annotations/*.xml and JPEGImages/
  masks         a folder with images/ and masks/ (label PNGs), optional classes.yaml
  instance PNGs as masks, with PedMasks/ or 'type: instance' in classes.yaml
  ImageFolder   a folder with one sub-folder of images per class"""

# Cases where a dataset annotated for one task serves a simpler one.
_TASK_DOWNGRADES = {("instance", "detect")}


def _file_contains(path: Path, needle: bytes, chunk: int = 1 << 20) -> bool:
    """Whether a (possibly huge) file contains ``needle``, without parsing it."""
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-len(needle):]
    return False


def _json_format(path: Path) -> str:
    return "coco-panoptic" if _file_contains(path, b'"segments_info"') else "coco"


def _find_json(folder: Path, split: str) -> Path | None:
    """The annotation JSON of a COCO-style folder (or its ``annotations/``), preferring ``split``'s."""
    files = [p for d in (folder, folder / "annotations") if d.is_dir() for p in sorted(d.glob("*.json"))]
    for preferred in (
        [p for p in files if p.stem.startswith("panoptic")],
        [p for p in files if p.name == "annotations.json" or p.stem.startswith("instances")],
        [p for p in files if _file_contains(p, b'"images"')],
    ):
        if len(preferred) > 1:
            preferred = [p for p in preferred if split in p.stem] or preferred
        if len(preferred) > 1:
            raise DataError(folder, f"several annotation files ({', '.join(p.name for p in preferred)}); "
                                    "pass the one to use")
        if preferred:
            return preferred[0]
    return None


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and is_image_file(p) for p in folder.rglob("*"))


def split_folder(path: Path, split: str) -> Path | None:
    """``path/<split>`` when ``path`` only holds split folders (``train/``, ``val/``, ``test/``, ...), as
    ISBI's ``train/`` + ``test/`` or an ImageFolder's ``train/`` + ``val/``; else None."""
    folders = subdirs(path)
    if not folders or any(d.name.lower() not in SPLIT_NAMES for d in folders):
        return None
    if any(p.is_file() and p.suffix.lower() in (".json", ".yaml", ".yml") for p in path.iterdir()):
        return None  # annotation files at the top: the folders are image folders of one layout
    names = {d.name.lower(): d for d in folders}
    wanted = ("val", "valid", "validation") if split in ("val", "valid", "validation") else (split,)
    return next((names[n] for n in wanted if n in names), None)


def detect_format(path: str | Path, split: str = "train") -> tuple[str, Path]:
    """``(format, path to pass to its reader)`` of a dataset file or folder. A folder of split folders
    (``train/``, ``val/``, ``test/``) stands for its ``split`` folder.

    Raises:
        DataError: the path does not exist, or matches no layout zir understands.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "dataset not found; check the path")
    if path.is_file():
        if path.suffix.lower() == ".json":
            return _json_format(path), path
        if path.suffix.lower() in (".yaml", ".yml"):
            return "yolo", path
        raise DataError(path, f"not a dataset file (.json or data.yaml); {LAYOUTS}")
    if find_data_yaml(path) is not None:
        return "yolo", path
    split_dir = split_folder(path, split)
    if split_dir is not None:
        return detect_format(split_dir, split)
    json_path = _find_json(path, split)
    if json_path is not None:
        return _json_format(json_path), json_path
    ann_dir = find_subdir(path, ANNOTATION_DIRS)
    if ann_dir is not None and any(ann_dir.glob("*.xml")):
        return "voc", path
    mask_dir = find_subdir(path, MASK_DIRS)
    if find_subdir(path, IMAGE_DIRS) and mask_dir is not None and list_images(mask_dir):
        instance_dir = find_subdir(path, INSTANCE_MASK_DIRS)
        if read_classes_yaml(path).get("type") == "instance" or (
                instance_dir is not None and instance_dir.name in ("PedMasks", "SegmentationObject")):
            return "instance-masks", path
        return "masks", path
    image_dir = find_subdir(path, IMAGE_DIRS)
    if image_dir is not None:  # not a class named "images": a detection or mask set missing its labels
        raise DataError(path, f"found {image_dir.name}/ but no annotations beside it (data.yaml, a COCO "
                              f"JSON, Annotations/*.xml or a masks folder). {LAYOUTS}")
    if any(_has_images(d) for d in subdirs(path)):
        return "imagefolder", path
    raise DataError(path, f"no dataset layout recognised. {LAYOUTS}")


def open_dataset(path: str | Path, format: str = "auto", task: str | None = None, split: str = "train",
                 **options: Any) -> DatasetIndex:
    """Read a dataset of any format zir understands.

    Args:
        path: a dataset folder or annotation file.
        format: ``"auto"`` (detect) or one of :data:`FORMATS` to force a reader.
        task: the task it will be used for; ``None`` keeps the dataset's own. An instance-segmentation
            set may serve ``detect``; any other mismatch raises DataError.
        split: the split to read where the format holds several (YOLO's YAML keys, VOC's ImageSets).
        options: passed to the reader (e.g. ``image_root=`` for COCO, ``classes=`` for VOC).
    """
    path = Path(path)
    if format == "auto":
        format, target = detect_format(path, split)
    elif format not in READERS:
        raise ConfigError(f"unknown dataset format {format!r}; choose one of {', '.join(FORMATS)} or 'auto'")
    elif not path.exists():
        raise DataError(path, "dataset not found; check the path")
    elif format in ("coco", "coco-panoptic") and path.is_dir():
        target = _find_json(path, split) or path
        if target.is_dir():
            raise DataError(path, "no annotation JSON in this folder; pass the JSON file")
    else:
        target = path
    reader = READERS[format]
    params = inspect.signature(reader).parameters
    if "split" in params:
        options["split"] = split
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ConfigError(f"option(s) {', '.join(unknown)} not understood by the {format} reader; it takes "
                          f"{', '.join(list(params)[1:])}")
    index = reader(target, **options)
    if task is not None and task != index.task:
        if (index.task, task) not in _TASK_DOWNGRADES:
            raise DataError(path, f"this is a {index.task} dataset ({format}); it cannot be used for {task}")
        index.task = task
    return index
