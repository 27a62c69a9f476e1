"""The data contract of zir, written down once.

Everything inside zir speaks these types; file formats are converted only at the edges
(``zir/data/formats``: readers and writers).

Units and conventions
---------------------
* Images are RGB, ``uint8``, channels first: ``(3, H, W)``. Greyscale, palette, 16-bit and RGBA files
  become RGB ``uint8`` when read; EXIF orientation is applied (``zir.data.image_io.read_image``).
* Boxes are ``float32[N, 4]`` in **XYXY, absolute pixels** of the image they belong to. ``x2`` and ``y2``
  are exclusive edges, so a box covering pixel columns 10..19 is ``x1=10, x2=20`` (COCO's convention;
  VOC's 1-based inclusive corners are converted by its reader and writer).
* Class ids are ``int64``, 0-based and contiguous; names live in the dataset's ``classes: list[str]``.
* ``semantic`` maps hold a class id per pixel; ``IGNORE_INDEX`` (255) marks pixels to ignore.

A **sample** (what a dataset's ``__getitem__`` returns) is a :class:`Sample` dict. A **record**
(:class:`Record`) is the annotation of one image before its pixels are read: what readers produce,
writers consume and ``zir data check`` validates. A **target** (:class:`Target`) is a sample's
annotations in a batch, with the image's own size inside the padded batch: what collate hands to a
model's ``loss`` and to the metrics.

A **prediction** has one type per task: :class:`ClassPrediction`, :class:`DetectionPrediction`
(instance segmentation adds ``masks``), :class:`SemanticPrediction` and :class:`PanopticPrediction`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

IGNORE_INDEX = 255
"""Value of a pixel in a ``semantic`` map that takes no part in the loss or the metrics."""

Task = Literal["classify", "detect", "segment", "instance", "panoptic"]
TASKS: tuple[str, ...] = ("classify", "detect", "segment", "instance", "panoptic")


class Sample(TypedDict, total=False):
    """One training or evaluation example.

    Keys (present where the task has them):
        image: ``tv_tensors.Image`` uint8 ``(3, H, W)`` RGB.
        label: ``int`` class id of the whole image (classification).
        boxes: ``tv_tensors.BoundingBoxes`` float32 ``(N, 4)`` XYXY absolute pixels.
        labels: ``Tensor`` int64 ``(N,)`` class id per object.
        iscrowd: ``Tensor`` bool ``(N,)``: COCO crowd regions (ignored by matching and metrics).
        difficult: ``Tensor`` bool ``(N,)``: VOC difficult objects (trained on; left out of evaluation:
            a detection on one is neither a true nor a false positive).
        masks: ``tv_tensors.Mask`` uint8 ``(N, H, W)`` one binary mask per object.
        semantic: ``tv_tensors.Mask`` int64 ``(H, W)`` class id per pixel, 255 = ignore.
        image_id: ``int`` unique within the dataset.
        path: ``str`` the image file it came from.
    """

    image: tv_tensors.Image
    label: int
    boxes: tv_tensors.BoundingBoxes
    labels: torch.Tensor
    iscrowd: torch.Tensor
    difficult: torch.Tensor
    masks: tv_tensors.Mask
    semantic: tv_tensors.Mask
    image_id: int
    path: str


# --------------------------------------------------------------------------------------------------
# Targets: a sample's annotations in a batch


@dataclass(eq=False)  # tensors have no single truth value to compare
class Target:
    """The annotations of one image of a batch, as models' ``loss`` and the metrics read them.

    ``zir.engine.data.collate`` makes one per sample (:meth:`from_sample`); the images of a batch are
    zero-padded at the bottom and right, and ``size`` says which part of the padded tensor is the
    image: ``images[i, :, :h, :w]``. Every annotation is in the pixels of that ``(h, w)`` image.
    Tensors are plain ``torch.Tensor`` (the ``tv_tensors`` wrappers matter only to the transforms).

    Attributes:
        size: ``(h, w)`` of the image; ``None`` only where no image exists to tell it (cached features,
            or annotations given to a metric without an image: COCO box AP does not need it).
        label: class id of the whole image (classification), else ``None``.
        boxes: float32 ``(N, 4)`` XYXY absolute pixels; ``(0, 4)`` when the task has none.
        labels: int64 ``(N,)`` class id per object.
        iscrowd: bool ``(N,)`` COCO crowd regions (all False when the data has none).
        difficult: bool ``(N,)`` VOC difficult objects: trained on, left out of evaluation (all False
            when the data has none).
        masks: uint8 ``(N, h, w)`` one binary mask per object, or ``None``.
        semantic: int64 ``(h, w)`` class id per pixel, 255 = ignore, or ``None``.
        image_id: unique within the dataset, or ``None``.
        path: the image file it came from (``""`` if unknown); error messages name it.
    """

    size: tuple[int, int] | None = None
    label: int | None = None
    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 4)))
    labels: torch.Tensor = field(default_factory=lambda: torch.zeros((0,), dtype=torch.int64))
    iscrowd: torch.Tensor | None = None  # None: no crowds, filled with False in __post_init__
    difficult: torch.Tensor | None = None  # None: none difficult, filled with False in __post_init__
    masks: torch.Tensor | None = None
    semantic: torch.Tensor | None = None
    image_id: int | None = None
    path: str = ""

    def __post_init__(self) -> None:
        if self.size is not None:
            self.size = (int(self.size[0]), int(self.size[1]))
        if self.iscrowd is None:
            self.iscrowd = torch.zeros(len(self.boxes), dtype=torch.bool, device=self.boxes.device)
        if self.difficult is None:
            self.difficult = torch.zeros(len(self.boxes), dtype=torch.bool, device=self.boxes.device)

    @classmethod
    def from_sample(cls, sample: Mapping[str, Any], size: tuple[int, int] | None = None) -> Target:
        """A :class:`Sample` (or any dict with its keys) as a target.

        ``size`` defaults to the first that the sample has: a ``"size"`` entry ``(H, W)`` (dicts made
        for the metrics), the image, the boxes' ``canvas_size``, the masks, the semantic map. Boxes in
        another ``BoundingBoxes`` format are converted to XYXY.
        """
        boxes = sample.get("boxes")
        if isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
            boxes = TF.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        boxes = torch.zeros((0, 4)) if boxes is None else _plain(boxes).reshape(-1, 4)
        labels = sample.get("labels")
        labels = torch.zeros((0,), dtype=torch.int64) if labels is None else _plain(labels).reshape(-1)
        iscrowd, difficult = sample.get("iscrowd"), sample.get("difficult")
        label, image_id = sample.get("label"), sample.get("image_id")
        return cls(size=size if size is not None else _size_of(sample),
                   label=None if label is None else int(label),
                   boxes=boxes, labels=labels,
                   iscrowd=None if iscrowd is None else _plain(iscrowd).reshape(-1).bool(),
                   difficult=None if difficult is None else _plain(difficult).reshape(-1).bool(),
                   masks=_plain(sample.get("masks")), semantic=_plain(sample.get("semantic")),
                   image_id=None if image_id is None else int(image_id), path=str(sample.get("path", "")))

    def to(self, device: torch.device | str) -> Target:
        """The same target with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Target(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})


def as_target(target: Target | Mapping[str, Any]) -> Target:
    """A target as it is, a sample dict converted (:meth:`Target.from_sample`): metrics take either."""
    return target if isinstance(target, Target) else Target.from_sample(target)


def _plain(value: Any) -> torch.Tensor | None:
    """A tensor without its ``tv_tensors`` wrapper (lists and arrays become tensors), ``None`` kept."""
    return None if value is None else torch.as_tensor(value).as_subclass(torch.Tensor)


def _size_of(sample: Mapping[str, Any]) -> tuple[int, int] | None:
    if "size" in sample:
        return tuple(sample["size"])
    if sample.get("image") is not None:
        return tuple(sample["image"].shape[-2:])
    boxes = sample.get("boxes")
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        return tuple(boxes.canvas_size)
    for key in ("masks", "semantic"):
        if sample.get(key) is not None:
            return tuple(sample[key].shape[-2:])
    return None


# --------------------------------------------------------------------------------------------------
# Records: annotations of one image, before pixels are read


Polygon = list[float]
"""A polygon as a flat list ``[x1, y1, x2, y2, ...]`` in absolute pixels (COCO's layout)."""


@dataclass
class Record:
    """Annotations of one image as a reader found them, in zir's units.

    Attributes:
        path: the image file.
        image_id: unique id within the dataset (COCO's id where the source had one).
        width, height: image size in pixels as the annotation file states it (``None`` if it does not;
            the image itself is the truth, and ``zir data check`` compares the two).
        label: image-level class id (classification).
        boxes: float32 ``(N, 4)`` XYXY absolute pixels.
        labels: int64 ``(N,)`` class ids.
        iscrowd: bool ``(N,)`` COCO crowd flag.
        difficult: bool ``(N,)`` VOC difficult flag.
        segmentations: per object ``None``, a list of polygons, or a COCO RLE dict
            (``{"size": [H, W], "counts": ...}``). Empty list if the format has no instance masks.
        mask_path: a label PNG: class-index map (semantic), object-id map (instance) or panoptic PNG.
        segments: COCO panoptic ``segments_info`` (each with ``id``, ``category_id`` already mapped to a
            0-based class id, ``iscrowd``).
        extra: per-object extra fields kept through round trips (e.g. synthetic ``scale``, ``overlap``),
            one dict per object.
        source: where the annotation came from (file and line or record number), used in error messages.
    """

    path: Path
    image_id: int = 0
    width: int | None = None
    height: int | None = None
    label: int | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))
    segmentations: list[Any] = field(default_factory=list)
    mask_path: Path | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)
    extra: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.iscrowd = _flags(self.iscrowd, n)
        self.difficult = _flags(self.difficult, n)
        if self.mask_path is not None:
            self.mask_path = Path(self.mask_path)
        if not self.source:
            self.source = str(self.path)

    @property
    def num_objects(self) -> int:
        return len(self.boxes)


def _flags(values: Any, n: int) -> np.ndarray:
    values = np.asarray(values, dtype=bool).reshape(-1)
    return values if len(values) == n else np.zeros((n,), bool)


@dataclass
class DatasetIndex:
    """What a reader returns: the records, the class names, and the problems it met while reading.

    ``problems`` lets ``zir data check`` list everything wrong in one pass instead of stopping at the
    first bad record; training raises on them (or skips the records with ``--skip-bad``).
    """

    records: list[Record]
    classes: list[str]
    task: str
    format: str
    root: Path
    problems: list[Problem] = field(default_factory=list)
    # Semantic mask PNGs: pixel value -> class id; values not in it become IGNORE_INDEX.
    # ``None`` means the values are the class ids already.
    value_map: dict[int, int] | None = None
    # Panoptic data: per class, True for "things" (countable objects), False for "stuff" (sky, ground).
    thing_classes: list[bool] | None = None


@dataclass
class Problem:
    """One thing wrong with a dataset, located precisely enough for a user to fix it.

    Attributes:
        file: the file at fault (image or annotation file).
        where: a finer location in it (line, record id, object index), may be empty.
        message: what is wrong and what to do.
        severity: ``"error"`` (the sample cannot be used) or ``"warning"``.
    """

    file: str
    where: str
    message: str
    severity: Literal["error", "warning"] = "error"
    record: int | None = None  # index into DatasetIndex.records, if the problem belongs to one

    def __str__(self) -> str:
        loc = f"{self.file}:{self.where}" if self.where else self.file
        return f"{self.severity}: {loc}: {self.message}"


# --------------------------------------------------------------------------------------------------
# Predictions: one type per task


@dataclass
class ClassPrediction:
    """Classification of one image.

    Attributes:
        scores: float32 ``(C,)`` softmax probabilities.
        label: the arg-max class id.
    """

    scores: torch.Tensor
    label: int

    def topk(self, k: int = 5) -> list[tuple[int, float]]:
        values, ids = self.scores.topk(min(k, len(self.scores)))
        return [(int(i), float(v)) for i, v in zip(ids, values)]

    def to_dict(self, classes: list[str] | None = None) -> dict[str, Any]:
        top = self.topk(5)
        return {
            "label": self.label,
            "class": classes[self.label] if classes else None,
            "top5": [{"label": i, "class": classes[i] if classes else None, "score": s} for i, s in top],
        }


@dataclass
class DetectionPrediction:
    """Objects found in one image (detection, and instance segmentation with ``masks``).

    Attributes:
        boxes: float32 ``(N, 4)`` XYXY absolute pixels of the *input image* (not the resized one).
        scores: float32 ``(N,)`` confidence, sorted descending.
        labels: int64 ``(N,)`` class ids.
        masks: bool ``(N, H, W)`` at the input image's size, or ``None`` for box-only detectors.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None

    def above(self, score: float) -> DetectionPrediction:
        """The detections with ``scores >= score`` (evaluation keeps low scores; people want fewer)."""
        keep = self.scores >= score
        return DetectionPrediction(self.boxes[keep], self.scores[keep], self.labels[keep],
                                   None if self.masks is None else self.masks[keep])

    def to_dict(self, classes: list[str] | None = None) -> dict[str, Any]:
        return {
            "boxes": self.boxes.tolist(),
            "scores": self.scores.tolist(),
            "labels": self.labels.tolist(),
            "classes": [classes[i] for i in self.labels.tolist()] if classes else None,
        }


@dataclass
class SemanticPrediction:
    """Per-pixel classes of one image.

    Attributes:
        semantic: int64 ``(H, W)`` class id per pixel at the input image's size.
        scores: float32 ``(C, H, W)`` probabilities, or ``None`` when not kept.
    """

    semantic: torch.Tensor
    scores: torch.Tensor | None = None

    def to_dict(self, classes: list[str] | None = None) -> dict[str, Any]:
        ids, counts = self.semantic.unique(return_counts=True)
        return {"pixels_per_class": {(classes[i] if classes else str(i)): int(c)
                                     for i, c in zip(ids.tolist(), counts.tolist())}}


@dataclass
class PanopticPrediction:
    """Every pixel of one image assigned to one segment: a thing instance or a stuff region.

    Attributes:
        ids: int64 ``(H, W)`` segment id per pixel at the input image's size; 0 = unlabelled.
        segments: one dict per segment: ``id`` (>= 1), ``category_id`` (0-based class id), ``isthing``,
            ``score`` (the instance's detection score; 1.0 for stuff) and ``area`` in pixels.
    """

    ids: torch.Tensor
    segments: list[dict[str, Any]]

    def segment_classes(self) -> dict[int, int]:
        """Segment id -> class id."""
        return {int(s["id"]): int(s["category_id"]) for s in self.segments}

    def to_dict(self, classes: list[str] | None = None) -> dict[str, Any]:
        return {"segments": [{**s, "class": classes[s["category_id"]] if classes else None} for s in self.segments]}


Prediction = ClassPrediction | DetectionPrediction | SemanticPrediction | PanopticPrediction
