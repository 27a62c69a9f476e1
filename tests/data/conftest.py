"""Tiny datasets built in ``tmp_path`` for the format readers, writers and conversion tests."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image


def save_image(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> Path:
    """Write a random image (PNG or JPEG by suffix)."""
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


# Three images: a colour PNG, a greyscale JPEG, and an image without objects. Category ids are not
# contiguous and not in order, so the reader's mapping to 0-based ids is exercised.
COCO_CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
COCO_IMAGES = [("a.png", 40, 30, "RGB"), ("b.jpg", 50, 20, "L"), ("c.png", 16, 16, "RGB")]
COCO_ANNOTATIONS = [  # image id, category id, bbox xywh, extra fields
    (1, 3, [2.5, 3.25, 10.0, 8.5], {"scale": 0.5, "occluded": False}),
    (1, 7, [20.0, 0.0, 20.0, 30.0], {}),
    (2, 7, [0.3, 1.7, 33.3, 11.1], {"overlap": 0.25}),
]


def write_coco_set(root: Path, annotations=COCO_ANNOTATIONS, images=COCO_IMAGES,
                   extra_images: list[dict] | None = None) -> Path:
    """A COCO detection set: ``root/images/`` and ``root/annotations.json``; returns the JSON path."""
    image_entries = []
    for i, (name, w, h, mode) in enumerate(images, start=1):
        save_image(root / "images" / name, w, h, mode, seed=i)
        image_entries.append({"id": i, "file_name": name, "width": w, "height": h})
    anns = [{"id": k, "image_id": im, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3],
             "iscrowd": 0, **extra} for k, (im, cat, bbox, extra) in enumerate(annotations, start=1)]
    data = {"images": image_entries + (extra_images or []), "annotations": anns,
            "categories": COCO_CATEGORIES}
    path = root / "annotations.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def coco_json(tmp_path: Path) -> Path:
    return write_coco_set(tmp_path / "coco")


# An instance-segmentation set: one 24x20 image with a rectangle polygon, a compressed RLE and an
# uncompressed RLE object; the hand-made masks are the oracle.
def instance_masks_oracle() -> np.ndarray:
    masks = np.zeros((3, 20, 24), np.uint8)
    masks[0, 2:8, 3:13] = 1  # rows 2..7, columns 3..12: the polygon below
    masks[1, 10:18, 1:5] = 1
    masks[1, 12:14, 6:9] = 1  # a second part: RLE holds any shape
    masks[2, 0:4, 20:24] = 1
    return masks


def write_coco_instance_set(root: Path) -> Path:
    from pycocotools import mask as coco_mask

    save_image(root / "images" / "m.png", 24, 20)
    masks = instance_masks_oracle()
    polygon = [[3, 2, 13, 2, 13, 8, 3, 8]]  # corners on pixel edges: covers exactly columns 3..12, rows 2..7
    compressed = coco_mask.encode(np.asfortranarray(masks[1]))
    compressed["counts"] = compressed["counts"].decode("ascii")
    # column-major runs, zeros first: 20 empty columns of 20 px, then 4 columns of 4 ones and 16 zeros
    uncompressed = {"size": [20, 24], "counts": [400, 4, 16, 4, 16, 4, 16, 4, 16]}
    segs = [polygon, compressed, uncompressed]
    boxes = [[3, 2, 10, 6], [1, 10, 8, 8], [20, 0, 4, 4]]
    data = {"images": [{"id": 5, "file_name": "m.png", "width": 24, "height": 20}],
            "annotations": [{"id": k + 1, "image_id": 5, "category_id": 1, "bbox": b, "segmentation": s,
                             "iscrowd": int(k == 1), "area": 0}
                            for k, (b, s) in enumerate(zip(boxes, segs))],
            "categories": [{"id": 1, "name": "thing"}]}
    path = root / "instances.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def coco_instance_json(tmp_path: Path) -> Path:
    return write_coco_instance_set(tmp_path / "inst")


# Instance-id PNGs as PennFudanPed: PNGImages/ + PedMasks/<stem>_mask.png, 0 = background.
def instance_ids() -> np.ndarray:
    ids = np.zeros((12, 16), np.uint8)
    ids[1:4, 2:6] = 1
    ids[5:12, 10:13] = 2
    ids[0, 15] = 255  # VOC-style void border: not an object
    return ids


def write_instance_masks(root: Path) -> Path:
    save_image(root / "PNGImages" / "FudanPed00001.png", 16, 12)
    save_mask(root / "PedMasks" / "FudanPed00001_mask.png", instance_ids())
    return root


def make_imagefolder(root: Path) -> Path:
    save_image(root / "zebra" / "z1.png", 12, 10)
    save_image(root / "ant" / "a1.jpg", 8, 8)
    save_image(root / "ant" / "nested" / "a2.png", 9, 7, "L")
    (root / "empty").mkdir()
    return root


def make_yolo(root: Path, lines: dict[str, str], names=("car", "person")) -> Path:
    """Images 40x20 (``x``: colour PNG, others greyscale) and the given label files."""
    for i, stem in enumerate(["x", "y", "nolabel"]):
        save_image(root / "images" / "train" / f"{stem}.png", 40, 20, "RGB" if stem == "x" else "L", seed=i)
    for stem, text in lines.items():
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    save_image(root / "images" / "val" / "v.png", 10, 10)
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": list(names)}
    (root / "data.yaml").write_text(json.dumps(data))  # JSON is YAML
    return root / "data.yaml"


VOC_XML = """<annotation>
  <filename>{filename}</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  {objects}
</annotation>"""
VOC_OBJECT = """<object><name>{name}</name><difficult>{difficult}</difficult>
  <bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"""


def voc_xml(filename: str, w: int, h: int, objects: list[tuple[str, list, int]]) -> str:
    objs = "".join(VOC_OBJECT.format(name=n, b=b, difficult=d) for n, b, d in objects)
    return VOC_XML.format(filename=filename, w=w, h=h, objects=objs)


def make_voc(root: Path, annotations: str = "Annotations", images: str = "JPEGImages") -> Path:
    save_image(root / images / "p.jpg", 30, 20, "L")
    save_image(root / images / "q.png", 25, 25)
    (root / annotations).mkdir(parents=True)
    (root / annotations / "p.xml").write_text(voc_xml("p.jpg", 30, 20, [
        ("horse", [1, 1, 10, 20], 0), ("bird", [5, 6, 30, 12], 1)]))
    # <filename> names a file that is not there (exported elsewhere): the reader falls back to q.png
    (root / annotations / "q.xml").write_text(voc_xml("renamed.jpg", 25, 25, [("horse", [2, 3, 4, 5], 0)]))
    return root


def save_mask(path: Path, values: np.ndarray, palette: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(values.astype(np.uint8), "L")
    if palette:
        img = img.convert("P")
        img.putpalette([c for i in range(256) for c in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
        img.putdata(values.astype(np.uint8).reshape(-1).tolist())
    img.save(path)
    return path


def make_masks(root: Path, values: list[np.ndarray], image_dir="images", mask_dir="masks",
               suffix="", palette=False) -> Path:
    for i, v in enumerate(values):
        save_image(root / image_dir / f"s{i}.jpg", v.shape[1], v.shape[0], seed=i)
        save_mask(root / mask_dir / f"s{i}{suffix}.png", v, palette)
    return root


def rgb_ids(ids: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG encoding of segment ids: ``id = R + 256 G + 256^2 B``."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def panoptic_ids() -> np.ndarray:
    ids = np.zeros((10, 14), np.int64)
    ids[:5] = 300  # sky (stuff), G = 1
    ids[6:9, 2:6] = 70001  # a person (thing), B = 1
    ids[6:9, 8:12] = 5  # another person
    return ids


def make_panoptic(root: Path) -> Path:
    save_image(root / "images" / "pic.jpg", 14, 10)
    (root / "panoptic").mkdir(parents=True)
    Image.fromarray(rgb_ids(panoptic_ids())).save(root / "panoptic" / "pic.png")
    data = {
        "images": [{"id": 9, "file_name": "pic.jpg", "width": 14, "height": 10}],
        "annotations": [{"image_id": 9, "file_name": "pic.png", "segments_info": [
            {"id": 300, "category_id": 40, "iscrowd": 0, "area": 70, "bbox": [0, 0, 14, 5]},
            {"id": 70001, "category_id": 2, "iscrowd": 0, "area": 12, "bbox": [2, 6, 4, 3]},
            {"id": 5, "category_id": 2, "iscrowd": 1, "area": 12, "bbox": [8, 6, 4, 3]}]}],
        "categories": [{"id": 40, "name": "sky", "isthing": 0}, {"id": 2, "name": "person", "isthing": 1}],
    }
    (root / "panoptic.json").write_text(json.dumps(data))
    return root / "panoptic.json"


@pytest.fixture
def layouts(tmp_path) -> dict[str, Path]:
    """One tiny dataset per layout open_dataset detects (keys: see test_formats.EXPECTED)."""
    coco = write_coco_set(tmp_path / "coco").parent
    inst = tmp_path / "inst"
    write_coco_instance_set(inst / "annotations")  # root/annotations/instances.json
    save_image(inst / "images" / "m.png", 24, 20)
    isbi = make_masks(tmp_path / "isbi" / "train", [np.zeros((4, 4), np.uint8)], "image", "label")
    typed = make_masks(tmp_path / "typed", [instance_ids()])  # object-id PNGs in masks/
    (typed / "classes.yaml").write_text("type: instance\nnames: [cell]\n")
    return {
        "coco": coco, "instance": inst,
        "yolo": make_yolo(tmp_path / "yolo", {"x": "0 0.5 0.5 0.1 0.1\n"}).parent,
        "voc": make_voc(tmp_path / "voc"),
        "masks": isbi,
        "instance-masks": write_instance_masks(tmp_path / "ped"),
        "typed-instance": typed,
        "coco-panoptic": make_panoptic(tmp_path / "pan").parent,
        "imagefolder": make_imagefolder(tmp_path / "cls"),
    }


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes and mtime: to show that a reader or writer changed nothing."""
    return {str(p.relative_to(root)): p.read_bytes() + str(p.stat().st_mtime_ns).encode()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def build() -> SimpleNamespace:
    """The builders and oracles above, for the test modules (which cannot import this file by name)."""
    return SimpleNamespace(
        image=save_image, mask=save_mask, coco=write_coco_set, coco_instance=write_coco_instance_set,
        instance_masks=write_instance_masks, imagefolder=make_imagefolder, yolo=make_yolo, voc=make_voc,
        voc_xml=voc_xml, masks=make_masks, panoptic=make_panoptic, instance_oracle=instance_masks_oracle,
        instance_ids=instance_ids, panoptic_ids=panoptic_ids, digest=tree_digest)
