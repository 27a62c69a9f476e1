"""``zir data check``: find everything wrong with a dataset in one pass, located precisely.

Readers (``zir/data/formats``) are lenient: they record annotation problems in
``DatasetIndex.problems`` and carry on. This module adds what needs the pixels (unreadable or truncated
images, image and mask sizes) and the whole dataset (duplicated files, classes without samples, an
empty dataset), and validates every record with :func:`validate_record`, the one function readers may
call too so both report a problem with the same words (exact duplicates are dropped, and a record
the reader already found annotation errors in is not validated again).

The training loader applies the same checks: :func:`bad_records` gives the records it must refuse
(or drop with ``--skip-bad``).
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ImageFile, UnidentifiedImageError
from tqdm import tqdm

from zir.data.contract import IGNORE_INDEX, DatasetIndex, Problem, Record
from zir.data.image_io import image_size, open_pil, read_label_png, read_panoptic_png, verify_image
from zir.errors import DataError

BOX_TOLERANCE = 1.0
"""Pixels a box may stick out of its image before it is an error (annotation tools round edges)."""


@dataclass
class CheckReport:
    """Everything found wrong with a dataset.

    Attributes:
        problems: sorted by file, then record (dataset-level problems first within a file).
        num_images: records checked.
        num_objects: boxes (detection, instance) or segments (panoptic) in them.
    """

    problems: list[Problem] = field(default_factory=list)
    num_images: int = 0
    num_objects: int = 0

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors()

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def format_text(self) -> str:
        """One line per problem (``severity: file:where: message``), then a one-line summary."""
        lines = [str(p) for p in self.problems]
        lines.append(f"{self.num_images} images, {self.num_objects} objects: "
                     f"{len(self.errors())} errors, {len(self.warnings())} warnings")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Record-level validation, shared with the readers


def split_source(source: str) -> tuple[str, str]:
    """Split a record's ``source`` (``"file:where"`` or ``"file"``) into ``(file, where)``."""
    head, sep, tail = source.rpartition(":")
    # A tail with a path separator is part of a path (e.g. ``C:\\data``), not a location in the file.
    if sep and head and tail.strip() and "/" not in tail and "\\" not in tail:
        return head, tail.strip()
    return source, ""


def _object_where(where: str, j: int) -> str:
    return f"{where}, object {j}" if where else f"object {j}"


def _fmt_box(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in box) + "]"


def validate_record(record: Record, index: DatasetIndex, i: int,
                    image_hw: tuple[int, int] | None) -> list[Problem]:
    """Problems in the annotations of one record, without reading any file.

    Checks boxes (NaN or infinite, zero or negative width or height, outside the image by more than
    :data:`BOX_TOLERANCE` pixels), class ids (``label``, ``labels``, panoptic ``segments``) outside
    ``0..len(classes)-1``, one label per box, COCO RLE sizes and polygons, and that a classification
    record has a label and a segmentation record a mask.

    Args:
        record: the record, boxes float32 ``(N, 4)`` XYXY absolute pixels.
        index: its dataset (for ``classes`` and ``task``).
        i: the record's position in ``index.records`` (stored in each problem's ``record``).
        image_hw: ``(H, W)`` of the image in pixels, or ``None`` when unknown (bounds are then not checked).

    Returns:
        Problems located by ``record.source`` (file, and record and object within it).
    """
    file, where = split_source(record.source)
    problems: list[Problem] = []

    def add(message: str, j: int | None = None) -> None:
        loc = where if j is None else _object_where(where, j)
        problems.append(Problem(file, loc, message, "error", record=i))

    C = len(index.classes)

    def unknown(c: object) -> str:
        return f"class id {c} is not one of the {C} classes (0..{C - 1}); fix the label or add the class"

    if index.task == "classify":
        if record.label is None:
            add("no class label for this image; label it or remove it")
        elif not 0 <= record.label < C:
            add(unknown(int(record.label)))

    boxes, labels = record.boxes, record.labels
    if len(labels) != len(boxes):
        add(f"{len(labels)} class ids for {len(boxes)} boxes; every box needs exactly one class id")
    for j, c in enumerate(labels.tolist()):
        if not 0 <= c < C:
            add(unknown(c), j)
    for j, box in enumerate(boxes):
        x1, y1, x2, y2 = (float(v) for v in box)
        if not np.isfinite(box).all():
            add(f"box {_fmt_box(box)} has NaN or infinite coordinates; fix or drop the box", j)
        elif x2 <= x1 or y2 <= y1:
            add(f"box {_fmt_box(box)} has zero or negative size ({x2 - x1:g}x{y2 - y1:g}); "
                "fix or drop the box", j)
        elif image_hw is not None:
            H, W = image_hw
            t = BOX_TOLERANCE
            if x1 < -t or y1 < -t or x2 > W + t or y2 > H + t:
                add(f"box {_fmt_box(box)} is outside the {W}x{H} image; fix, clip or drop the box", j)

    for j, seg in enumerate(record.segmentations):
        problems += [Problem(file, _object_where(where, j), m, "error", record=i)
                     for m in _segmentation_problems(seg, image_hw)]

    for s in record.segments:
        c = s.get("category_id")
        if not isinstance(c, (int, np.integer)) or not 0 <= c < C:
            add(f"segment {s.get('id')}: " + unknown(c))

    if index.task in ("segment", "panoptic") and record.mask_path is None:
        add("no mask PNG for this image; add its label PNG or remove the image")
    return problems


def _segmentation_problems(seg: Any, image_hw: tuple[int, int] | None) -> list[str]:
    """What is wrong with one COCO segmentation (``None``, polygons or RLE)."""
    if seg is None:
        return []
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if size is None or counts is None:
            return ["RLE without 'size' or 'counts'; re-encode the mask"]
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_count(v) for v in size)):
            return [f"RLE size {size!r} is not [height, width]; re-encode the mask"]
        if isinstance(counts, list):
            if not all(_is_count(v) for v in counts) or sum(counts) != size[0] * size[1]:
                return ["uncompressed RLE counts must be whole numbers >= 0 adding up to height * width; "
                        "re-encode the mask"]
        elif not (isinstance(counts, (str, bytes)) and (counts.isascii() if isinstance(counts, str) else True)):
            return ["RLE counts must be a list of numbers or a COCO-compressed ASCII string; re-encode the mask"]
        if image_hw is not None and tuple(int(v) for v in size) != tuple(image_hw):
            return [f"RLE size {list(size)} differs from the image's {list(image_hw)} (H, W); "
                    "re-encode the mask at the image's size"]
        return []
    if not isinstance(seg, (list, tuple)) or not all(isinstance(p, (list, tuple)) for p in seg):
        return ["segmentation is neither a list of polygons [[x1, y1, x2, y2, ...], ...] nor an RLE "
                "dict; fix it"]
    out = []
    for poly in seg:
        if len(poly) < 6 or len(poly) % 2:
            out.append(f"polygon with {len(poly)} coordinates; a polygon needs at least 3 (x, y) "
                       "points; fix or drop it")
        elif not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly):
            out.append("polygon with coordinates that are not numbers; fix or drop it")
        elif not np.isfinite(np.asarray(poly, dtype=np.float64)).all():
            out.append("polygon with NaN or infinite coordinates; fix or drop it")
        elif image_hw is not None and not _near_image(poly, image_hw):
            out.append(f"polygon points lie far outside the {image_hw[1]}x{image_hw[0]} image; fix or drop it")
    return out


def _is_count(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v < 2**31


def _near_image(poly: list[float], image_hw: tuple[int, int]) -> bool:
    """Points within one image size of the image (further out is a broken annotation, and would make
    the rasteriser allocate memory for the whole outline)."""
    H, W = image_hw
    xs, ys = np.asarray(poly[0::2], np.float64), np.asarray(poly[1::2], np.float64)
    return bool((xs >= -W).all() and (xs <= 2 * W).all() and (ys >= -H).all() and (ys <= 2 * H).all())


# --------------------------------------------------------------------------------------------------
# Pixel-level checks: one record's image and mask


@dataclass
class _PixelResult:
    problems: list[Problem] = field(default_factory=list)
    image_hw: tuple[int, int] | None = None  # (H, W) of the image as read, EXIF orientation applied
    mask_classes: set[int] | None = None  # class ids present in a semantic mask (when decoded)


MIN_IMAGE_SIDE = 8
"""An image with a side below this many pixels is a warning: too small to learn from, and usually a
placeholder or a broken export."""


def _check_pixels(record: Record, index: DatasetIndex, i: int, open_images: bool,
                  skip: set[Path], verify: bool = False) -> _PixelResult:
    """Image and mask of one record; files in ``skip`` (which the reader already failed on) are left out."""
    out = _PixelResult()
    path = record.path
    if path not in skip:
        # ImageFolder records are their own source: saying "(listed in X)" after X would repeat the path.
        listed = "" if split_source(record.source)[0] == str(path) else f" (listed in {record.source})"
        if not path.is_file():
            out.problems.append(Problem(str(path), "", f"image file not found{listed}; fix the path "
                                                       "or remove the record", record=i))
        else:
            try:
                if open_images:
                    W, H = open_pil(path).size  # decodes every byte: truncated files fail here
                elif verify:
                    W, H = verify_image(path)  # a cheap decode: truncated files fail here too
                else:
                    W, H = image_size(path)
                out.image_hw = (H, W)
                if min(W, H) < MIN_IMAGE_SIDE:
                    out.problems.append(Problem(str(path), "", f"image is only {W}x{H} pixels{listed}; "
                                                               "check that it is not a placeholder or a "
                                                               "broken export", "warning", record=i))
            except DataError as e:
                out.problems.append(Problem(str(path), "", f"{e.detail}{listed}", record=i))
    mask_hw = None
    if record.mask_path is not None and record.mask_path not in skip:
        mask_hw = _check_mask(record, index, i, out, open_images)
    stated = (record.height, record.width) if record.width and record.height else None
    # When the mask has the stated size, the image is the odd one out and the mask check said so
    # (the masks reader takes the stated size from the mask itself).
    if out.image_hw is not None and stated is not None and stated != out.image_hw and mask_hw != stated:
        H, W = out.image_hw
        hint = (" (the image has an EXIF rotation: the annotation must use the rotated size)"
                if stated == (W, H) else "")
        file, where = split_source(record.source)
        out.problems.append(Problem(
            file, where, f"annotation says the image is {record.width}x{record.height} but "
            f"{path.name} is {W}x{H}{hint}; fix width and height or the boxes", record=i))
    return out


def _check_mask(record: Record, index: DatasetIndex, i: int, out: _PixelResult,
                open_images: bool) -> tuple[int, int] | None:
    """Add the problems of a record's mask PNG to ``out``; return its ``(H, W)`` if it could be read."""
    mask_path = record.mask_path
    assert mask_path is not None
    file = str(mask_path)
    if not mask_path.is_file():
        out.problems.append(Problem(file, "", f"mask file not found (for {record.path.name}, listed in "
                                              f"{record.source}); add it or remove the record", record=i))
        return None
    values = None
    try:
        if open_images:
            read = read_panoptic_png if index.task == "panoptic" else read_label_png
            values = read(mask_path)
            mh, mw = values.shape[:2]
        else:
            mw, mh = image_size(mask_path)  # header only; refuses decompression bombs as DataError
    except DataError as e:
        out.problems.append(Problem(file, "", e.detail, record=i))
        return None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        out.problems.append(Problem(file, "", f"cannot read mask ({e}); re-export it", record=i))
        return None
    if out.image_hw is not None and (mh, mw) != out.image_hw:
        H, W = out.image_hw
        out.problems.append(Problem(file, "", f"mask is {mw}x{mh} but its image {record.path.name} is "
                                              f"{W}x{H}; masks must have the image's size: re-export it",
                                    record=i))
    if values is None:
        return mh, mw
    if index.task == "segment":
        out.mask_classes, strange = _semantic_values(values, index)
        if strange:
            shown = ", ".join(map(str, strange[:10])) + (", ..." if len(strange) > 10 else "")
            out.problems.append(Problem(file, "", f"pixel values {shown} are not classes (nor 255, ignore); "
                                                  "map them to a class id or to 255 in classes.yaml "
                                                  "'values', or fix the mask", record=i))
    elif record.segments:  # instance object-id PNG or panoptic PNG: every segment needs pixels
        present = set(np.unique(values).tolist())
        for s in record.segments:
            if s.get("id") not in present:
                out.problems.append(Problem(file, "", f"segment id {s.get('id')} has no pixels in this "
                                                      "PNG, so training skips it; remove it from the "
                                                      "segments or fix the PNG", "warning", record=i))
    return mh, mw


def _semantic_values(values: np.ndarray, index: DatasetIndex) -> tuple[set[int], list[int]]:
    """Class ids present in a label map, and the pixel values that are neither a class nor ignore."""
    C = len(index.classes)
    present, strange = set(), []
    for v in np.unique(values).tolist():
        c = v if index.value_map is None else index.value_map.get(v, IGNORE_INDEX)
        if 0 <= c < C:
            present.add(c)
        elif v != IGNORE_INDEX and (index.value_map is None or v not in index.value_map):
            strange.append(v)
    return present, strange


# --------------------------------------------------------------------------------------------------
# The whole dataset


@contextlib.contextmanager
def _strict_pil() -> Iterator[None]:
    """PIL must refuse truncated files while checking, whatever someone set globally."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def check_dataset(index: DatasetIndex, open_images: bool = True, progress: bool = True,
                  verify: bool = False) -> CheckReport:
    """Check every record of a dataset, its files and the dataset as a whole.

    Args:
        index: what a reader returned; its ``problems`` are part of the report.
        open_images: decode every image and mask fully (finds truncated files, and semantic mask values).
            ``False`` reads only the file headers: much faster, but sizes and existence only.
        verify: with ``open_images=False``, still check cheaply that every image decodes to its end
            (:func:`zir.data.image_io.verify_image`): what training checks up front.
        progress: show a progress bar on stderr.

    Returns:
        A :class:`CheckReport`; never raises for problems in the data.
    """
    records = index.records
    problems = list(index.problems)
    seen = {(p.file, p.where, p.message) for p in problems}

    def add(ps: list[Problem]) -> None:
        for p in ps:
            if (p.file, p.where, p.message) not in seen:
                seen.add((p.file, p.where, p.message))
                problems.append(p)

    # Files the reader already reported an error on: it has said what is wrong with them. Records it
    # found any error in are not validated again: its word stands, since ours (worded differently
    # unless the reader calls validate_record) would say the same thing twice.
    reader_errors: dict[int, set[Path]] = defaultdict(set)
    for p in index.problems:
        if p.severity == "error" and p.record is not None and 0 <= p.record < len(records):
            reader_errors[p.record].add(Path(p.file))

    def pixels(i: int) -> _PixelResult:
        return _check_pixels(records[i], index, i, open_images, reader_errors.get(i, set()), verify)

    # Decoding releases the GIL, so threads give a near-linear speed-up without pickling records.
    workers = min(8, os.cpu_count() or 1)
    with _strict_pil(), ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(pixels, range(len(records))), total=len(records),
                            desc="checking images", unit="img", disable=not progress))

    present: Counter[int] = Counter()
    for i, (record, res) in enumerate(zip(records, results)):
        add(res.problems)
        # Validate against the size the annotation states, as the reader did; an image of another
        # size is a problem of its own (above).
        hw = (record.height, record.width) if record.width and record.height else res.image_hw
        if i not in reader_errors:
            add(validate_record(record, index, i, hw))
        if index.task == "classify" and record.label is not None:
            present[int(record.label)] += 1
        elif index.task == "segment":
            present.update(res.mask_classes or ())
        elif index.task == "panoptic":
            present.update(int(s.get("category_id", -1)) for s in record.segments)
        else:
            present.update(record.labels.tolist())

    add(_duplicate_files(index))
    root = str(index.root)
    if not records:
        add([Problem(root, "", f"no images found (format {index.format!r}, task {index.task!r}); "
                               "check the path, the split and the format")])
    elif open_images or index.task != "segment":  # semantic classes are known from decoded masks only
        for c, name in enumerate(index.classes):
            if present[c] == 0:
                add([Problem(root, f"class {c} {name!r}", "no sample of this class; add examples or "
                                                          "remove the class", "warning")])

    num_objects = sum(len(r.segments) if index.task == "panoptic" else r.num_objects for r in records)
    problems.sort(key=lambda p: (p.file, -1 if p.record is None else p.record))  # stable: objects stay in order
    return CheckReport(problems, len(records), num_objects)


def _duplicate_files(index: DatasetIndex) -> list[Problem]:
    """The same image listed twice (error), or two images sharing a file name.

    Shared names are errors for COCO, whose images conventionally live in one folder, and warnings
    elsewhere (an ImageFolder's ``cat/001.jpg`` and ``dog/001.jpg`` are fine until exported flat).
    """
    out = []
    by_path: dict[Path, int] = {}
    by_name: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(index.records):
        key = r.path.resolve()
        if key in by_path:
            first = index.records[by_path[key]]
            file, where = split_source(r.source)
            out.append(Problem(file, where, f"image {r.path} is listed twice (first in {first.source}); "
                                            "merge the two records or remove one", record=i))
            continue
        by_path[key] = i
        by_name[r.path.name].append(i)
    severity = "error" if index.format.startswith("coco") else "warning"
    for name, ids in by_name.items():
        if len(ids) < 2:
            continue
        paths = [str(index.records[i].path) for i in ids]
        for i in ids[1:]:
            file, where = split_source(index.records[i].source)
            out.append(Problem(file, where, f"{len(ids)} images share the file name {name} "
                                            f"({', '.join(paths)}); formats that keep images in one "
                                            "folder cannot hold both under their names: rename one", severity, record=i))
    return out


def check_path(path: str | Path, format: str = "auto", task: str | None = None, split: str = "train",
               open_images: bool = True, progress: bool = True) -> CheckReport:
    """Read a dataset with ``zir.data.formats.open_dataset`` and check it (see :func:`check_dataset`).

    An annotation file the reader cannot parse at all becomes the report's single problem instead of a
    traceback.
    """
    from zir.data.formats import open_dataset  # the readers import much; only this entry point needs them

    try:
        index = open_dataset(path, format=format, task=task, split=split)
    except DataError as e:
        return CheckReport([Problem(e.file, e.where, e.detail)])
    return check_dataset(index, open_images=open_images, progress=progress)


def bad_records(index: DatasetIndex, report: CheckReport) -> set[int]:
    """Indices into ``index.records`` of the records with at least one error in ``report``."""
    n = len(index.records)
    return {p.record for p in report.problems
            if p.severity == "error" and p.record is not None and 0 <= p.record < n}
