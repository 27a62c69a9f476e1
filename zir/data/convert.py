"""Dataset conversion: read any format zir understands, write COCO, YOLO or Pascal VOC.

The source is never modified; the result is a standalone dataset (annotations and copied images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zir.data.contract import DatasetIndex
from zir.data.formats import open_dataset, write_coco, write_voc, write_yolo
from zir.errors import ConfigError, DataError

WRITERS = {"coco": write_coco, "yolo": write_yolo, "voc": write_voc}


def drop_bad_records(index: DatasetIndex) -> DatasetIndex:
    """The index without the records that have a problem of severity ``error``."""
    bad = {p.record for p in index.problems if p.severity == "error" and p.record is not None}
    records = [r for i, r in enumerate(index.records) if i not in bad]
    return DatasetIndex(records, index.classes, index.task, index.format, index.root, [],
                        index.value_map, index.thing_classes)


def convert(src: str | Path, dst: str | Path, to: str, src_format: str = "auto", overwrite: bool = False,
            skip_bad: bool = False, split: str = "train", **options: Any) -> Path:
    """Convert the dataset at ``src`` into format ``to`` in the folder ``dst``.

    Args:
        src: dataset folder or annotation file (any layout :func:`~zir.data.formats.open_dataset` reads).
        dst: output folder: new or empty (or ``overwrite=True``), outside the source.
        to: ``"coco"``, ``"yolo"`` or ``"voc"``.
        src_format: ``"auto"`` or the source's format name.
        skip_bad: drop the records that have errors instead of refusing to convert.
        split: the source split to read (YOLO, VOC); YOLO and VOC outputs use the same split name.
        options: passed to the reader (e.g. ``image_root=``).

    Returns:
        What the writer returns: ``annotations.json`` (COCO), ``data.yaml`` (YOLO), the folder (VOC).

    Raises:
        DataError: the source has errors (and not ``skip_bad``), or its task does not fit ``to``.
    """
    if to not in WRITERS:
        raise ConfigError(f"cannot convert to {to!r}; choose one of {', '.join(WRITERS)}")
    index = open_dataset(src, format=src_format, split=split, **options)
    errors = [p for p in index.problems if p.severity == "error"]
    if errors and not skip_bad:
        listed = "\n  ".join(str(p) for p in errors[:5])
        raise DataError(src, f"{len(errors)} problem(s) in the source, e.g.\n  {listed}\nrun `zir data check "
                             f"{src}` to list them all; fix them, or convert with skip_bad (--skip-bad) to "
                             "leave those images out")
    if skip_bad:
        index = drop_bad_records(index)
    if to == "coco":
        return write_coco(index, dst, overwrite=overwrite)
    return WRITERS[to](index, dst, split=split, overwrite=overwrite)
