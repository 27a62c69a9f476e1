"""``zir data stats``: what a dataset holds, as numbers (:func:`format_stats`) and as a figure (:func:`plot_stats`).

Object sizes use COCO's area ranges, so the counts say how much of the dataset each of the
``AP_small / AP_medium / AP_large`` metrics will rest on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval.core import mask as mask_codec

from zir.data.contract import IGNORE_INDEX, DatasetIndex, Record
from zir.data.image_io import image_size, read_label_png
from zir.errors import DataError

SMALL, LARGE = 32**2, 96**2
"""COCO's area thresholds in pixels: small < 32^2 <= medium < 96^2 <= large."""


@dataclass
class Stats:
    """Counts over one dataset.

    Attributes:
        task, classes: from the dataset.
        num_images: records.
        num_objects: boxes (detect, instance) or segments (panoptic); 0 for classify and segment.
        per_class: class name -> objects (detect, instance, panoptic), images (classify), or images
            containing the class (segment). Ids outside the class list appear as ``"unknown id N"``.
        objects_per_image: number of objects -> number of images with that many (empty for classify
            and segment).
        area_ranges: ``"small" / "medium" / "large"`` -> objects, by mask area where the record has
            masks (instance segmentations, panoptic ``area``), else box area ``w * h``, in pixels.
        sqrt_areas: float64 ``(M,)`` square root of each object's area in pixels (for the histogram).
        min_size, max_size: smallest and largest ``(W, H)`` over images (width and height taken
            separately); ``None`` if no image size is known.
        pixel_fraction: segment only: class name -> fraction of all mask pixels.
        ignore_fraction: segment only: fraction of mask pixels marked ignore (255 or unmapped values).
    """

    task: str
    classes: list[str]
    num_images: int
    num_objects: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    objects_per_image: dict[int, int] = field(default_factory=dict)
    area_ranges: dict[str, int] = field(default_factory=lambda: {"small": 0, "medium": 0, "large": 0})
    sqrt_areas: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float64))
    min_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None
    pixel_fraction: dict[str, float] = field(default_factory=dict)
    ignore_fraction: float | None = None

    @property
    def has_objects(self) -> bool:
        return self.task in ("detect", "instance", "panoptic")

    @property
    def objects_min(self) -> int:
        return min(self.objects_per_image, default=0)

    @property
    def objects_max(self) -> int:
        return max(self.objects_per_image, default=0)

    @property
    def objects_mean(self) -> float:
        n = sum(self.objects_per_image.values())
        return sum(k * v for k, v in self.objects_per_image.items()) / n if n else 0.0


def _class_name(classes: list[str], c: int) -> str:
    return classes[c] if 0 <= c < len(classes) else f"unknown id {c}"


def _size_of(record: Record) -> tuple[int, int] | None:
    """``(W, H)`` as the annotation states it, else from the image header; ``None`` if unreadable."""
    if record.width and record.height:
        return record.width, record.height
    try:
        return image_size(record.path)
    except DataError:
        return None


def _segmentation_area(seg: Any, height: int, width: int) -> float | None:
    """Pixel area of a COCO segmentation (polygons or RLE), or ``None`` if it has none."""
    if seg is None or (isinstance(seg, list) and not seg):
        return None
    if isinstance(seg, dict):
        if isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_codec.frPyObjects(seg, *seg["size"])
        else:
            rle = seg
        return float(mask_codec.area(rle))
    polys = [list(map(float, p)) for p in seg if len(p) >= 6 and len(p) % 2 == 0]
    if not polys:
        return None
    return float(mask_codec.area(mask_codec.merge(mask_codec.frPyObjects(polys, height, width))))


def _object_areas(record: Record, task: str, size: tuple[int, int] | None) -> list[float]:
    """Area in pixels of each object of a record; objects without a usable area are left out."""
    if task == "panoptic":
        out = []
        for s in record.segments:
            if "area" in s:
                out.append(float(s["area"]))
            elif "bbox" in s:  # COCO [x, y, w, h]
                out.append(float(s["bbox"][2]) * float(s["bbox"][3]))
        return out
    b = record.boxes.astype(np.float64)
    areas = (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)  # (N,)
    out = []
    for j, a in enumerate(areas.tolist()):
        seg = record.segmentations[j] if task == "instance" and j < len(record.segmentations) else None
        if seg is not None and size is not None:
            m = _segmentation_area(seg, size[1], size[0])
            a = a if m is None else m
        if np.isfinite(a):
            out.append(a)
    return out


def _class_map(values: np.ndarray, index: DatasetIndex) -> np.ndarray:
    """Label-PNG values ``(H, W)`` -> class ids ``(H, W)``, ``IGNORE_INDEX`` for what is not a class."""
    C = len(index.classes)
    # Through the unique values, so RGB-encoded maps (values up to 2^24) need no 2^24 lookup table.
    uniq, inverse = np.unique(values, return_inverse=True)
    ids = uniq if index.value_map is None else np.array(
        [index.value_map.get(int(v), IGNORE_INDEX) for v in uniq], np.int64)
    ids = np.where((ids >= 0) & (ids < C), ids, IGNORE_INDEX)
    return ids[inverse].reshape(values.shape)


def dataset_stats(index: DatasetIndex) -> Stats:
    """Count images, objects, classes, object sizes and image sizes of a dataset.

    Segment datasets read every mask PNG (for pixel fractions); other tasks read at most the image
    headers of records whose annotation does not state a size. Unreadable files are skipped (``zir data
    check`` reports them).
    """
    task, classes = index.task, index.classes
    stats = Stats(task=task, classes=list(classes), num_images=len(index.records))
    per_class: Counter[int] = Counter()
    per_image: Counter[int] = Counter()
    pixels = np.zeros(len(classes) + 1, np.int64)  # last slot: ignore
    sqrt_areas: list[float] = []
    sizes = []
    for record in index.records:
        size = _size_of(record)
        if size is not None:
            sizes.append(size)
        if task == "classify":
            if record.label is not None:
                per_class[int(record.label)] += 1
            continue
        if task == "segment":
            if record.mask_path is None:
                continue
            try:
                ids = _class_map(read_label_png(record.mask_path), index)
            except DataError:
                continue
            counts = np.bincount(np.where(ids == IGNORE_INDEX, len(classes), ids).ravel(),
                                 minlength=len(classes) + 1)
            pixels += counts
            per_class.update(np.nonzero(counts[:-1])[0].tolist())
            continue
        labels = ([int(s.get("category_id", -1)) for s in record.segments] if task == "panoptic"
                  else record.labels.tolist())
        per_class.update(labels)
        per_image[len(labels)] += 1
        areas = _object_areas(record, task, size)
        sqrt_areas += np.sqrt(areas).tolist()
        for a in areas:
            stats.area_ranges["small" if a < SMALL else "medium" if a < LARGE else "large"] += 1

    # Every class is listed, with 0 where it has no sample, then ids outside the class list.
    stats.per_class = {name: per_class.get(c, 0) for c, name in enumerate(classes)}
    stats.per_class.update({_class_name(classes, c): n for c, n in sorted(per_class.items())
                            if not 0 <= c < len(classes)})
    stats.objects_per_image = dict(sorted(per_image.items()))
    stats.num_objects = sum(k * v for k, v in per_image.items())
    stats.sqrt_areas = np.asarray(sqrt_areas, np.float64)
    if sizes:
        w, h = np.asarray(sizes).T
        stats.min_size, stats.max_size = (int(w.min()), int(h.min())), (int(w.max()), int(h.max()))
    if task == "segment" and pixels.sum():
        total = pixels.sum()
        stats.pixel_fraction = {name: float(pixels[c] / total) for c, name in enumerate(classes)}
        stats.ignore_fraction = float(pixels[-1] / total)
    return stats


def format_stats(stats: Stats) -> str:
    """A plain-text report: totals, then one row per class."""
    lines = [f"task: {stats.task}    images: {stats.num_images}"
             + (f"    objects: {stats.num_objects}" if stats.has_objects else "")]
    if stats.min_size is not None and stats.max_size is not None:
        lines.append(f"image size (W x H): min {stats.min_size[0]}x{stats.min_size[1]}, "
                     f"max {stats.max_size[0]}x{stats.max_size[1]}")
    if stats.has_objects:
        lines.append(f"objects per image: min {stats.objects_min}, mean {stats.objects_mean:.2f}, "
                     f"max {stats.objects_max}")
        r = stats.area_ranges
        lines.append(f"object sizes: small (< 32^2 px) {r['small']}, medium {r['medium']}, "
                     f"large (>= 96^2 px) {r['large']}")
    if stats.ignore_fraction is not None:
        lines.append(f"ignored pixels: {100 * stats.ignore_fraction:.1f}%")

    what = {"classify": "images", "segment": "images with it"}.get(stats.task, "objects")
    total = sum(stats.per_class.values())
    width = max([len("class"), *map(len, stats.per_class)])
    header = f"{'class':<{width}}  {what:>14}  {'share':>6}"
    if stats.pixel_fraction:
        header += f"  {'pixels':>7}"
    lines += ["", header]
    for name, n in stats.per_class.items():
        row = f"{name:<{width}}  {n:>14}  {100 * n / max(total, 1):>5.1f}%"
        if stats.pixel_fraction:
            row += f"  {100 * stats.pixel_fraction.get(name, 0.0):>6.1f}%"
        lines.append(row)
    return "\n".join(lines)


def plot_stats(stats: Stats, out_png: Path) -> Path:
    """Save histograms of the dataset as a PNG and return its path.

    Panels: samples per class (bar); for object tasks, objects per image and object size
    (sqrt of area, with COCO's 32 and 96 px thresholds marked); for segment, pixel share per class.
    """
    # Figure + Agg canvas, not pyplot: no display, no global figure state, safe in any process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out_png = Path(out_png)
    panels = ["classes"] + (["per_image", "sizes"] if stats.has_objects else [])
    panels += ["pixels"] if stats.pixel_fraction else []
    n_cls = max(len(stats.per_class), 1)
    fig = Figure(figsize=(max(6.0, min(0.25 * n_cls, 24.0)), 3.2 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    names = list(stats.per_class)
    rotate = 90 if n_cls > 8 else 0
    for ax, panel in zip(axes, panels):
        if panel == "classes":
            ax.bar(range(len(names)), list(stats.per_class.values()), color="tab:blue")
            ax.set_xticks(range(len(names)), names, rotation=rotate, fontsize=8)
            ax.set_ylabel({"classify": "images", "segment": "images with it"}.get(stats.task, "objects"))
            ax.set_title("samples per class")
        elif panel == "per_image":
            ks = list(stats.objects_per_image)
            ax.bar(ks, list(stats.objects_per_image.values()), width=0.9, color="tab:green")
            ax.set_xlabel("objects in the image")
            ax.set_ylabel("images")
            ax.set_title("objects per image")
        elif panel == "sizes":
            if len(stats.sqrt_areas):
                ax.hist(stats.sqrt_areas, bins=50, color="tab:orange")
            for t, label in ((32, "32 (small | medium)"), (96, "96 (medium | large)")):
                ax.axvline(t, color="k", linestyle="--", linewidth=1)
                ax.annotate(label, (t, 1), xycoords=("data", "axes fraction"), rotation=90,
                            va="top", ha="right", fontsize=8)
            ax.set_xlabel("sqrt(object area) [px]")
            ax.set_ylabel("objects")
            ax.set_title("object sizes")
        else:
            ax.bar(range(len(names)), [100 * stats.pixel_fraction.get(n, 0.0) for n in names],
                   color="tab:purple")
            ax.set_xticks(range(len(names)), names, rotation=rotate, fontsize=8)
            ax.set_ylabel("% of pixels")
            ax.set_title("pixel share per class")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png
