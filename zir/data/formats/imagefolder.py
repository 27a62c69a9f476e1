"""ImageFolder (classification): ``ROOT/<class name>/*.jpg``, one folder per class.

Pass the folder of one split (``data/train``), not the folder above the splits.
"""

from __future__ import annotations

from pathlib import Path

from zir.data.contract import DatasetIndex, Problem, Record
from zir.data.formats._common import list_images, subdirs
from zir.errors import DataError

SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


def read_imagefolder(root: str | Path, classes: list[str] | None = None) -> DatasetIndex:
    """Read ``ROOT/<class>/**/<image>``; classes are the folder names sorted, unless ``classes`` is given.

    A class folder without images is an error (a class nothing can teach; ``--skip-bad`` leaves it
    out); with ``classes`` given, other folders are ignored
    and a missing class folder is a warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "folder not found")
    problems: list[Problem] = []
    folders = {d.name: list_images(d, recursive=True) for d in subdirs(root)}
    if folders and all(n.lower() in SPLIT_NAMES for n in folders):
        raise DataError(root, f"this folder holds splits ({', '.join(folders)}), not classes; pass one "
                              f"split folder, e.g. {root / next(iter(folders))}")
    if classes is None:
        for name, files in folders.items():
            if not files:
                problems.append(Problem(str(root / name), "", "class folder has no images; add images of "
                                                              "this class or remove the folder"))
        classes = [n for n, files in folders.items() if files]
    if not classes:
        raise DataError(root, "no class folders with images; expected ROOT/<class name>/<image files>")
    records: list[Record] = []
    for label, name in enumerate(classes):
        if name not in folders:
            problems.append(Problem(str(root / name), "", f"no folder for class {name!r}", "warning"))
        for path in folders.get(name, []):
            records.append(Record(path=path, image_id=len(records), label=label))
    return DatasetIndex(records, list(classes), "classify", "imagefolder", root, problems)
