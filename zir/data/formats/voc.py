"""Pascal VOC XML (detection): reader and writer.

Layout: ``ROOT/Annotations/*.xml`` and ``ROOT/JPEGImages/`` (or ``annotations/`` and ``images/``),
optionally ``ImageSets/Main/<split>.txt`` listing the image ids of a split.

VOC corners are 1-based *inclusive* pixel indices: a box over pixel columns 0..9 (zir ``x1=0, x2=10``)
is ``xmin=1, xmax=10``. So ``x1 = xmin - 1`` and ``x2 = xmax``, and back ``xmin = x1 + 1``, ``xmax = x2``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from zir.data.contract import DatasetIndex, Problem, Record
from zir.data.formats._common import (
    box_problem,
    check_finite,
    copy_image,
    find_subdir,
    header_size,
    images_by_stem,
    output_names,
    prepare_output,
    record_size,
)
from zir.errors import DataError

ANNOTATION_DIRS = ("Annotations", "annotations")
IMAGE_DIRS = ("JPEGImages", "images")
CLASSES_FILE = "classes.txt"  # one name per line, as labelImg writes it; keeps class ids through round trips


def _int(element: ET.Element | None, tag: str) -> int | None:
    text = element.findtext(tag) if element is not None else None
    try:
        return int(float(text)) if text is not None else None
    except ValueError:
        return None


def _parse_object(obj: ET.Element) -> tuple[str, list[float], bool] | str:
    """``(name, XYXY box in zir units, difficult)``, or a message saying what is wrong."""
    name = (obj.findtext("name") or "").strip()
    if not name:
        return "object has no <name>; add the class name"
    bndbox = obj.find("bndbox")
    if bndbox is None:
        return f"object {name!r} has no <bndbox>; add it or remove the object"
    try:
        xmin, ymin, xmax, ymax = (float(bndbox.findtext(t) or "nan") for t in ("xmin", "ymin", "xmax", "ymax"))
    except ValueError:
        return f"object {name!r}: <bndbox> coordinates must be numbers"
    difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true")
    return name, [xmin - 1, ymin - 1, xmax, ymax], difficult


def read_voc(root: str | Path, classes: list[str] | None = None, split: str | None = None) -> DatasetIndex:
    """Read a Pascal VOC folder.

    Args:
        root: the folder holding ``Annotations/`` (or ``annotations/``).
        classes: class names in id order; by default those of ``ROOT/classes.txt`` if present, else the
            names found, sorted. Objects of other classes are problems.
        split: read only the ids in ``ImageSets/Main/<split>.txt`` when that file exists.

    An XML file that cannot be parsed is a problem of its image (not an exception), so that one pass
    lists every broken file.
    """
    root = Path(root)
    ann_dir = find_subdir(root, ANNOTATION_DIRS)
    if ann_dir is None:
        raise DataError(root, "no Annotations/ folder; a VOC dataset has ROOT/Annotations/*.xml")
    image_dir = find_subdir(root, IMAGE_DIRS) or ann_dir
    xml_files = sorted(ann_dir.glob("*.xml"))
    split_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if split and split_file.is_file():
        wanted = {line.split()[0] for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()}
        xml_files = [p for p in xml_files if p.stem in wanted]
    if classes is None and (root / CLASSES_FILE).is_file():
        classes = [n.strip() for n in (root / CLASSES_FILE).read_text(encoding="utf-8").splitlines() if n.strip()]
    by_stem = images_by_stem(image_dir)
    problems: list[Problem] = []

    parsed: list[tuple[Record, list[tuple[str, list[float], bool, str]]]] = []
    for xml_path in xml_files:
        r = len(parsed)
        try:
            tree: ET.Element | None = ET.parse(xml_path).getroot()
        except ET.ParseError as e:
            tree = None
            problems.append(Problem(str(xml_path), "", f"cannot parse XML ({e}); fix or remove the file", record=r))
        if tree is not None and tree.tag != "annotation":
            problems.append(Problem(str(xml_path), "", f"root element is <{tree.tag}>, not <annotation>", record=r))
            tree = None
        filename = (tree.findtext("filename") or "").strip() if tree is not None else ""
        image = image_dir / filename if filename else None
        if image is None or not image.is_file():  # fall back to the XML's stem with an image extension
            image = by_stem.get(xml_path.stem, image or image_dir / f"{xml_path.stem}.jpg")
        size = tree.find("size") if tree is not None else None
        width, height = _int(size, "width"), _int(size, "height")
        if not (width and height):
            width, height = header_size(image) or (None, None)
        rec = Record(path=image, image_id=r, width=width, height=height, source=str(xml_path))
        if not image.is_file():
            problems.append(Problem(str(image), "", f"image file not found (named by {xml_path.name}); "
                                                    "restore it or remove the XML", record=r))
        objects = []
        for k, obj in enumerate(tree.findall("object") if tree is not None else []):
            result = _parse_object(obj)
            if isinstance(result, str):
                problems.append(Problem(str(xml_path), f"object {k}", result, record=r))
                continue
            message = box_problem(result[1], width, height)
            if message:
                problems.append(Problem(str(xml_path), f"object {k} ({result[0]})", message, record=r))
            objects.append((*result, f"object {k}"))
        parsed.append((rec, objects))

    if classes is None:
        classes = sorted({o[0] for _, objects in parsed for o in objects})
    class_id = {name: i for i, name in enumerate(classes)}
    records = []
    for r, (rec, objects) in enumerate(parsed):
        kept = []
        for name, box, difficult, where in objects:
            if name in class_id:
                kept.append((box, class_id[name], difficult))
            else:
                problems.append(Problem(rec.source, where, f"class {name!r} is not in {CLASSES_FILE} / the "
                                                           "given classes; fix the name or add the class",
                                        record=r))
        if kept:
            rec.boxes = np.asarray([k[0] for k in kept], np.float32)
            rec.labels = np.asarray([k[1] for k in kept], np.int64)
            rec.difficult = np.asarray([k[2] for k in kept], bool)
            rec.iscrowd = np.zeros(len(kept), bool)
        records.append(rec)
    return DatasetIndex(records, list(classes), "detect", "voc", root, problems)


# --------------------------------------------------------------------------------------------------
# Writing


def _sub(parent: ET.Element, tag: str, text: str | int) -> ET.Element:
    child = ET.SubElement(parent, tag)
    child.text = str(text)
    return child


def _annotation_xml(rec: Record, filename: str, classes: list[str], W: int, H: int) -> ET.ElementTree:
    ann = ET.Element("annotation")
    _sub(ann, "folder", "JPEGImages")
    _sub(ann, "filename", filename)
    size = ET.SubElement(ann, "size")
    _sub(size, "width", W)
    _sub(size, "height", H)
    _sub(size, "depth", 3)  # zir reads every image as RGB
    _sub(ann, "segmented", 0)
    for i, (box, label) in enumerate(zip(rec.boxes.tolist(), rec.labels.tolist())):
        obj = ET.SubElement(ann, "object")
        _sub(obj, "name", classes[label])
        _sub(obj, "pose", "Unspecified")
        _sub(obj, "truncated", 0)
        _sub(obj, "difficult", int(rec.difficult[i]) if i < len(rec.difficult) else 0)
        bndbox = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = box
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (round(x1) + 1, round(y1) + 1, round(x2), round(y2))):
            _sub(bndbox, tag, v)
    tree = ET.ElementTree(ann)
    ET.indent(tree, space="\t")
    return tree


def write_voc(index: DatasetIndex, out_dir: str | Path, split: str = "train", overwrite: bool = False) -> Path:
    """Write a standalone VOC dataset: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``
    and ``classes.txt``.

    Corners are rounded to whole pixels (VOC stores integers). Images are copied as they are (a PNG stays
    a PNG; ``<filename>`` names it). Crowd flags are dropped: VOC has none.

    Returns:
        ``out_dir``.
    """
    if index.task not in ("detect", "instance"):
        raise DataError(index.root, f"a {index.task} dataset cannot be written as VOC detection XML")
    out = prepare_output(out_dir, index, overwrite)
    (out / "Annotations").mkdir(exist_ok=True)
    names = output_names([r.path for r in index.records], flat=True)
    for rec, name in zip(index.records, names):
        check_finite(rec)
        W, H = record_size(rec)
        copy_image(rec.path, out / "JPEGImages" / name, rec)
        tree = _annotation_xml(rec, name, index.classes, W, H)
        tree.write(out / "Annotations" / f"{Path(name).stem}.xml", encoding="utf-8", xml_declaration=False)
    main = out / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    (main / f"{split}.txt").write_text("".join(f"{Path(n).stem}\n" for n in names), encoding="utf-8")
    (out / CLASSES_FILE).write_text("".join(f"{c}\n" for c in index.classes), encoding="utf-8")
    return out
