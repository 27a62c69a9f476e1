"""Writers and conversion: round trips between formats, refusals, and sources left untouched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from zir.data.contract import Record
from zir.data.convert import convert
from zir.data.dataset import load_sample
from zir.data.formats import (
    open_dataset,
    read_coco,
    read_voc,
    read_yolo,
    write_coco,
    write_coco_json,
    write_voc,
    write_yolo,
)
from zir.errors import ConfigError, DataError


def objects_by_file(index) -> dict[str, list[tuple[str, list[float]]]]:
    """``{image file name: [(class name, XYXY box), ...]}``: comparable across formats and orders."""
    return {r.path.name: [(index.classes[c], b) for c, b in zip(r.labels.tolist(), r.boxes.tolist())]
            for r in index.records}


def assert_same_objects(a, b, atol: float) -> None:
    objs_a, objs_b = objects_by_file(a), objects_by_file(b)
    assert objs_a.keys() == objs_b.keys()
    for name in objs_a:
        assert [c for c, _ in objs_a[name]] == [c for c, _ in objs_b[name]], name
        if objs_a[name]:
            np.testing.assert_allclose([b for _, b in objs_a[name]], [b for _, b in objs_b[name]], atol=atol)


def test_write_coco_then_read_coco_gives_the_same_records(coco_json, tmp_path):
    src = read_coco(coco_json)
    out = write_coco(src, tmp_path / "out")
    assert out == tmp_path / "out" / "annotations.json" and (tmp_path / "out" / "images" / "b.jpg").is_file()
    back = read_coco(out)
    assert back.classes == src.classes and back.problems == []
    for r, s in zip(back.records, src.records):
        assert (r.path.name, r.image_id, r.width, r.height) == (s.path.name, s.image_id, s.width, s.height)
        np.testing.assert_array_equal(r.boxes, s.boxes)  # shortest float32 decimals read back exactly
        np.testing.assert_array_equal(r.labels, s.labels)
        np.testing.assert_array_equal(r.iscrowd, s.iscrowd)
        assert r.extra == s.extra
    linked = read_coco(write_coco(src, tmp_path / "linked", copy_images=False))
    assert [r.path.resolve() for r in linked.records] == [r.path.resolve() for r in src.records]
    assert not (tmp_path / "linked" / "images").exists() and linked.problems == []
    coco = COCO(str(out))  # the reference reader agrees on categories and areas
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog"]
    assert coco.anns[1]["area"] == pytest.approx(10.0 * 8.5) and coco.anns[1]["category_id"] == 1


def test_write_coco_keeps_polygons_and_rle_and_computes_mask_areas(coco_instance_json, tmp_path, build):
    src = read_coco(coco_instance_json)
    out = write_coco(src, tmp_path / "out")
    back = read_coco(out)
    assert back.task == "instance" and back.records[0].segmentations == src.records[0].segmentations
    oracle = build.instance_oracle()
    np.testing.assert_array_equal(load_sample(back.records[0], back)["masks"].numpy(), oracle)
    coco = COCO(str(out))
    for ann, mask in zip(coco.loadAnns(coco.getAnnIds()), oracle):
        assert ann["area"] == mask.sum()
        np.testing.assert_array_equal(coco.annToMask(ann), mask)


def test_written_files_are_deterministic(coco_json, tmp_path):
    src = read_coco(coco_json)
    for writer, name in ((write_coco, "annotations.json"), (write_yolo, "labels/train/a.txt"),
                         (write_voc, "Annotations/a.xml")):
        writer(src, tmp_path / f"{writer.__name__}1")
        writer(src, tmp_path / f"{writer.__name__}2")
        assert (tmp_path / f"{writer.__name__}1" / name).read_bytes() == \
            (tmp_path / f"{writer.__name__}2" / name).read_bytes()


def test_coco_to_yolo_to_coco_keeps_boxes_within_half_a_pixel(coco_json, tmp_path):
    src = read_coco(coco_json)
    yaml_path = convert(coco_json, tmp_path / "yolo", "yolo")
    # a.png is 40x30; box [2.5, 3.25, 12.5, 11.75] is centre (7.5, 7.5), size 10 x 8.5
    first = (tmp_path / "yolo" / "labels" / "train" / "a.txt").read_text().splitlines()[0]
    np.testing.assert_allclose([float(v) for v in first.split()], [0, 7.5 / 40, 7.5 / 30, 10 / 40, 8.5 / 30],
                               atol=1e-6)
    assert not (tmp_path / "yolo" / "labels" / "train" / "c.txt").read_text()  # no objects, empty file
    yolo = read_yolo(yaml_path)
    assert yolo.classes == src.classes and yolo.problems == []
    back = read_coco(convert(yaml_path, tmp_path / "back", "coco"))
    assert back.classes == src.classes
    assert_same_objects(src, back, atol=0.5)


def test_coco_to_voc_to_coco_keeps_classes_in_order_and_boxes_within_half_a_pixel(coco_json, tmp_path):
    src = read_coco(coco_json)
    convert(coco_json, tmp_path / "voc", "voc")
    xml = (tmp_path / "voc" / "Annotations" / "a.xml").read_text()
    assert "<xmin>21</xmin><ymin>1</ymin><xmax>40</xmax><ymax>30</ymax>" in "".join(xml.split())
    voc = read_voc(tmp_path / "voc")
    assert voc.classes == ["cat", "dog"] and voc.problems == []  # classes.txt keeps COCO's order
    assert (tmp_path / "voc" / "ImageSets" / "Main" / "train.txt").read_text().split() == ["a", "b", "c"]
    back = read_coco(convert(tmp_path / "voc", tmp_path / "back", "coco"))
    assert back.classes == src.classes
    assert_same_objects(src, back, atol=0.5)  # VOC stores whole pixels


def test_voc_round_trip_is_exact_with_difficult_flags(build, tmp_path):
    src = read_voc(build.voc(tmp_path / "src"))
    back = read_voc(write_voc(src, tmp_path / "out"))
    assert back.classes == src.classes
    for r, s in zip(back.records, src.records):
        np.testing.assert_array_equal(r.boxes, s.boxes)
        np.testing.assert_array_equal(r.difficult, s.difficult)
    assert back.records[0].difficult.tolist() == [False, True]


def test_instance_coco_to_yolo_writes_polygons_and_boxes(coco_instance_json, tmp_path, build):
    src = read_coco(coco_instance_json)
    yaml_path = write_yolo(src, tmp_path / "yolo")
    lines = (tmp_path / "yolo" / "labels" / "train" / "m.txt").read_text().splitlines()
    assert [len(line.split()) for line in lines] == [9, 5]  # polygon; uncompressed RLE as a box; crowd left out
    yolo = read_yolo(yaml_path)
    assert yolo.task == "instance"
    np.testing.assert_allclose(yolo.records[0].boxes, src.records[0].boxes[[0, 2]], atol=1e-4)
    masks = load_sample(yolo.records[0], yolo)["masks"].numpy()
    np.testing.assert_array_equal(masks[0], build.instance_oracle()[0])


def test_instance_id_pngs_to_coco_become_rle_masks(build, tmp_path):
    src = open_dataset(build.instance_masks(tmp_path / "ped"))
    back = read_coco(convert(tmp_path / "ped", tmp_path / "coco", "coco"))
    assert back.task == "instance" and back.classes == ["object"]
    np.testing.assert_array_equal(back.records[0].boxes, src.records[0].boxes)
    ids = build.instance_ids()
    masks = load_sample(back.records[0], back)["masks"].numpy()
    np.testing.assert_array_equal(masks, np.stack([ids == 1, ids == 2]))


def test_write_coco_json_for_generated_records(tmp_path, build):
    image = build.image(tmp_path / "gen" / "scenes" / "0.png", 10, 8)
    rec = Record(path=image, image_id=3, width=10, height=8, boxes=[[1, 2, 4, 6]], labels=[0],
                 extra=[{"scale": 0.25}])
    out = write_coco_json([rec], ["ball"], tmp_path / "gen" / "annotations.json", tmp_path / "gen")
    data = json.loads(out.read_text())
    assert data["images"] == [{"id": 3, "file_name": "scenes/0.png", "width": 10, "height": 8}]
    ann = data["annotations"][0]
    assert ann["bbox"] == [1, 2, 3, 4] and ann["scale"] == 0.25 and ann["category_id"] == 1
    assert data["categories"][0]["name"] == "ball"
    with pytest.raises(DataError, match="width/height"):
        write_coco_json([Record(path=image)], ["ball"], tmp_path / "x.json", tmp_path)


def test_writers_refuse_non_empty_folders_and_the_source(coco_json, tmp_path):
    src = read_coco(coco_json)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for writer in (write_coco, write_yolo, write_voc):
        with pytest.raises(DataError, match="not empty.*overwrite"):
            writer(src, tmp_path / "full")
        for inside in (coco_json.parent, coco_json.parent / "converted", tmp_path):
            with pytest.raises(DataError, match="source"):
                writer(src, inside, overwrite=True)
    write_coco(src, tmp_path / "full", overwrite=True)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"  # overwrite writes over, deletes nothing
    assert read_coco(tmp_path / "full" / "annotations.json").problems == []


def test_convert_refuses_a_source_with_errors_unless_skip_bad(build, tmp_path):
    anns = [(1, 3, [0, 0, 5, 5], {}), (2, 7, [45, 0, 10, 10], {})]  # the second is outside b.jpg
    path = build.coco(tmp_path / "bad", anns)
    with pytest.raises(DataError, match=r"(?s)1 problem.*outside.*zir data check"):
        convert(path, tmp_path / "out", "yolo")
    assert not (tmp_path / "out").exists()
    yaml_path = convert(path, tmp_path / "out", "yolo", skip_bad=True)
    assert [r.path.name for r in read_yolo(yaml_path).records] == ["a.png", "c.png"]


@pytest.mark.parametrize("to", ["coco", "yolo", "voc"])
def test_convert_leaves_the_source_unchanged(coco_instance_json, coco_json, tmp_path, build, to):
    sources = (coco_json.parent, coco_instance_json.parent)
    before = [build.digest(s) for s in sources]
    convert(coco_json.parent, tmp_path / f"out-{to}", to)
    convert(coco_instance_json, tmp_path / f"out-{to}-inst", to)
    assert [build.digest(s) for s in sources] == before


def test_convert_rejects_tasks_and_targets_it_cannot_write(build, tmp_path):
    masks = build.masks(tmp_path / "sem", [np.zeros((4, 4), np.uint8)])
    with pytest.raises(DataError, match="segment dataset cannot be written as COCO"):
        convert(masks, tmp_path / "out", "coco")
    with pytest.raises(DataError, match="panoptic dataset cannot be written as YOLO"):
        convert(build.panoptic(tmp_path / "pan"), tmp_path / "out", "yolo")
    with pytest.raises(ConfigError, match="cannot convert to 'kitti'"):
        convert(masks, tmp_path / "out", "kitti")


def test_write_rejects_nan_boxes_instead_of_writing_invalid_files(coco_json, tmp_path):
    src = read_coco(coco_json)
    src.records[0].boxes[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        write_coco(src, tmp_path / "out")
    assert Path(src.records[0].path).is_file()
