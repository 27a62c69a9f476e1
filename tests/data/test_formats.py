"""Readers of every format, their quirks, the problems they report, and autodetection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from zir.data.contract import IGNORE_INDEX, DatasetIndex
from zir.data.dataset import ZirDataset, load_sample
from zir.data.formats import (
    FORMATS,
    detect_format,
    open_dataset,
    read_coco,
    read_coco_panoptic,
    read_imagefolder,
    read_instance_masks,
    read_masks,
    read_voc,
    read_yolo,
)
from zir.errors import ConfigError, DataError


def where(index: DatasetIndex) -> list[tuple[str, str, int | None]]:
    return [(Path(p.file).name, p.where, p.record) for p in index.problems if p.severity == "error"]


# --------------------------------------------------------------------------------------------------
# ImageFolder


def test_imagefolder_classes_sorted_and_nested_images(build, tmp_path):
    index = read_imagefolder(build.imagefolder(tmp_path / "cls"))
    assert index.classes == ["ant", "zebra"] and index.task == "classify"
    assert [(r.path.name, r.label) for r in index.records] == [("a1.jpg", 0), ("a2.png", 0), ("z1.png", 1)]
    assert [p.severity for p in index.problems] == ["error"] and "empty" in index.problems[0].file


def test_imagefolder_refuses_the_folder_above_the_splits(build, tmp_path):
    build.imagefolder(tmp_path / "data" / "train")
    build.imagefolder(tmp_path / "data" / "val")
    with pytest.raises(DataError, match="one split folder"):
        read_imagefolder(tmp_path / "data")


# --------------------------------------------------------------------------------------------------
# COCO


def test_coco_boxes_classes_and_extra_fields(coco_json):
    index = read_coco(coco_json)
    assert index.task == "detect" and index.format == "coco" and index.problems == []
    assert index.classes == ["cat", "dog"]  # ascending category id: 3 -> 0, 7 -> 1
    a, b, c = index.records
    assert [r.image_id for r in index.records] == [1, 2, 3]
    assert a.path == coco_json.parent / "images" / "a.png"  # found in images/ next to the JSON
    np.testing.assert_allclose(a.boxes, [[2.5, 3.25, 12.5, 11.75], [20, 0, 40, 30]])
    np.testing.assert_array_equal(a.labels, [0, 1])
    assert a.extra == [{"scale": 0.5, "occluded": False}, {}] and b.extra == [{"overlap": 0.25}]
    np.testing.assert_allclose(b.boxes, [[0.3, 1.7, 33.6, 12.8]], rtol=1e-6)
    assert (b.width, b.height) == (50, 20) and c.num_objects == 0 and a.segmentations == []


def test_coco_problems_name_file_and_record(build, tmp_path):
    anns = [(1, 3, [0, 0, 5, 5], {}),
            (1, 99, [0, 0, 5, 5], {}),  # unknown category: dropped
            (2, 7, [45, 0, 10, 10], {}),  # out of the 50x20 image by 5 px
            (2, 7, [1, 1, 0, 4], {}),  # zero width
            (3, 7, [math.nan, 1, 2, 2], {}),
            (42, 3, [0, 0, 1, 1], {})]  # no such image: belongs to no record
    path = build.coco(tmp_path / "bad", anns, extra_images=[{"id": 4, "file_name": "gone.png",
                                                                   "width": 8, "height": 8}])
    index = read_coco(path)
    assert where(index) == [("gone.png", "", 3), ("annotations.json", "annotation 2", 0),
                            ("annotations.json", "annotation 3", 1), ("annotations.json", "annotation 4", 1),
                            ("annotations.json", "annotation 5", 2), ("annotations.json", "annotation 6", None)]
    messages = [p.message for p in index.problems]
    assert "unknown category id 99" in messages[1] and "outside the 50x20 image" in messages[2]
    assert "zero or negative size" in messages[3] and "NaN" in messages[4]
    assert index.records[0].num_objects == 1 and len(index.records) == 4


def test_coco_unparseable_json_raises_naming_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(DataError, match="broken.json.*cannot parse JSON"):
        read_coco(bad)
    bad.write_text('{"images": [], "annotations": []}')
    with pytest.raises(DataError, match="categories"):
        read_coco(bad)


def test_coco_polygon_and_rle_segmentations_decode_to_the_hand_made_masks(build, coco_instance_json):
    index = read_coco(coco_instance_json)
    assert index.task == "instance" and index.problems == []
    rec = index.records[0]
    assert isinstance(rec.segmentations[0], list) and isinstance(rec.segmentations[1]["counts"], str)
    assert isinstance(rec.segmentations[2]["counts"], list)  # kept as read
    sample = load_sample(rec, index)
    np.testing.assert_array_equal(sample["masks"].numpy(), build.instance_oracle())
    assert sample["iscrowd"].tolist() == [False, True, False]


# --------------------------------------------------------------------------------------------------
# YOLO


def test_yolo_boxes_polygons_and_missing_label_file(build, tmp_path):
    yaml_path = build.yolo(tmp_path / "y", {
        "x": "0 0.5 0.5 0.5 0.5\n\n1 0.1 0.1 0.3 0.1 0.3 0.6\n",  # a box and a triangle
        "y": "1 0.25 0.75 0.5 0.5\n",
    })
    index = read_yolo(yaml_path.parent)  # the folder works as well as the YAML
    assert index.task == "instance" and index.classes == ["car", "person"]
    nolabel, x, y = index.records
    np.testing.assert_allclose(x.boxes, [[10, 5, 30, 15], [4, 2, 12, 12]], atol=1e-5)  # 40 x 20 px
    np.testing.assert_allclose(x.segmentations[1][0], [4, 2, 12, 2, 12, 12], atol=1e-5)
    assert x.segmentations[0] is None and x.labels.tolist() == [0, 1]
    np.testing.assert_allclose(y.boxes, [[0, 10, 20, 20]], atol=1e-5)
    assert nolabel.num_objects == 0 and (nolabel.width, nolabel.height) == (40, 20)
    # box lines in a polygon set: their masks will be empty
    assert [(Path(p.file).name, p.severity) for p in index.problems] == [("x.txt", "warning"), ("y.txt", "warning")]
    val = read_yolo(yaml_path, split="val")
    assert [r.path.name for r in val.records] == ["v.png"] and val.task == "detect"


@pytest.mark.parametrize("line, message", [
    ("0 0.5 0.5 0.5", "got 4 values"),
    ("0 0.5 0.5 0.5 0.5 0.5", "got 6 values"),
    ("0 0.5 zero 0.5 0.5", "must be numbers"),
    ("2 0.5 0.5 0.5 0.5", "class id 2"),
    ("0.5 0.5 0.5 0.5 0.5", "class id 0.5"),
    ("0 nan 0.5 0.5 0.5", "NaN"),
    ("0 0.9 0.5 0.5 0.5", "outside the 40x20 image"),
    ("0 0.5 0.5 0 0.5", "zero or negative size"),
])
def test_yolo_bad_lines_are_problems_with_file_and_line(build, tmp_path, line, message):
    yaml_path = build.yolo(tmp_path / "y", {"y": f"0 0.5 0.5 0.2 0.2\n{line}\n"})
    index = read_yolo(yaml_path)
    assert where(index) == [("y.txt", "line 2", 2)]  # records: nolabel, x, y
    assert message in index.problems[0].message


def test_yolo_names_dict_and_missing_keys(build, tmp_path):
    yaml_path = build.yolo(tmp_path / "y", {}, names=("a", "b"))
    text = yaml_path.read_text().replace('["a", "b"]', '{"1": "b", "0": "a"}')
    yaml_path.write_text(text)
    assert read_yolo(yaml_path).classes == ["a", "b"]
    with pytest.raises(DataError, match="no 'test' entry"):
        read_yolo(yaml_path, split="test")
    yaml_path.write_text(text.replace(str(yaml_path.parent), "/moved/elsewhere"))
    moved = read_yolo(yaml_path)  # a `path` from another machine: the YAML's folder is used, with a warning
    assert len(moved.records) == 3 and [p.where for p in moved.problems] == ["path"]
    yaml_path.write_text("train: images/train\n")
    with pytest.raises(DataError, match="data.yaml.*names"):
        read_yolo(yaml_path)


# --------------------------------------------------------------------------------------------------
# Pascal VOC


def test_voc_one_based_corners_difficult_and_filename_fallback(build, tmp_path):
    index = read_voc(build.voc(tmp_path / "voc"))
    assert index.classes == ["bird", "horse"] and index.problems == []
    p, q = index.records
    np.testing.assert_array_equal(p.boxes, [[0, 0, 10, 20], [4, 5, 30, 12]])  # xmin=1 -> x1=0
    assert p.labels.tolist() == [1, 0] and p.difficult.tolist() == [False, True]
    assert q.path.name == "q.png"
    sample = load_sample(p, index)  # a greyscale JPEG becomes 3 channels
    assert sample["image"].shape == (3, 20, 30)


def test_voc_lowercase_folders_given_classes_and_broken_files(build, tmp_path):
    root = build.voc(tmp_path / "voc", "annotations", "images")
    (root / "annotations" / "r.xml").write_text("<annotation><filename>")
    (root / "annotations" / "s.xml").write_text(build.voc_xml("s.jpg", 9, 9, [("horse", [1, 1, "x", 2], 0)]))
    index = read_voc(root, classes=["horse"])
    assert index.classes == ["horse"]
    assert sorted(where(index), key=lambda w: w[2]) == [
        ("p.xml", "object 1", 0),  # bird: not a given class
        ("r.xml", "", 2), ("r.jpg", "", 2),  # broken XML, so no <filename> and no image
        ("s.jpg", "", 3), ("s.xml", "object 0", 3)]  # no image; a bad coordinate
    assert index.records[0].labels.tolist() == [0]


# --------------------------------------------------------------------------------------------------
# Semantic masks


def test_binary_0_255_masks_become_classes_0_and_1(build, tmp_path):
    m = np.zeros((6, 8), np.uint8)
    m[2:4, 1:7] = 255
    index = read_masks(build.masks(tmp_path / "bin", [m, np.zeros((6, 8), np.uint8)]))
    assert index.classes == ["background", "foreground"] and index.value_map == {0: 0, 255: 1}
    semantic = load_sample(index.records[0], index)["semantic"]
    np.testing.assert_array_equal(semantic.numpy(), (m == 255).astype(np.int64))


def test_palette_masks_give_their_indices_and_255_is_ignored(build, tmp_path):
    m = np.array([[0, 1, 2, 255], [2, 2, 1, 0]], np.uint8)
    index = read_masks(build.masks(tmp_path / "pal", [m], palette=True))
    assert Image.open(index.records[0].mask_path).mode == "P"
    assert index.classes == ["class_0", "class_1", "class_2"] and index.value_map is None
    np.testing.assert_array_equal(load_sample(index.records[0], index)["semantic"].numpy(), m.astype(np.int64))


def test_isbi_layout_with_classes_yaml_values(build, tmp_path):
    m = np.array([[0, 255, 128], [255, 0, 0]], np.uint8)
    root = build.masks(tmp_path / "isbi", [m], "image", "label", suffix="_mask")
    (root / "classes.yaml").write_text("names: [membrane, cell]\nvalues: {0: 0, 255: 1, 128: 255}\n")
    index = read_masks(root)
    assert index.classes == ["membrane", "cell"] and index.value_map == {0: 0, 255: 1, 128: 255}
    semantic = load_sample(index.records[0], index)["semantic"].numpy()
    np.testing.assert_array_equal(semantic, [[0, 1, IGNORE_INDEX], [1, 0, 0]])


def test_masks_missing_and_orphan_files_are_problems(build, tmp_path):
    root = build.masks(tmp_path / "m", [np.zeros((4, 4), np.uint8)])
    build.image(root / "images" / "lonely.png", 4, 4)
    build.mask(root / "masks" / "orphan.png", np.zeros((4, 4)))
    index = read_masks(root)
    assert where(index) == [("lonely.png", "", 0)]
    assert [(Path(p.file).name, p.severity) for p in index.problems][-1] == ("orphan.png", "warning")


# --------------------------------------------------------------------------------------------------
# Instance-id masks and COCO panoptic


def test_instance_id_masks_give_objects_boxes_and_masks(build, tmp_path):
    index = read_instance_masks(build.instance_masks(tmp_path / "ped"))
    assert index.task == "instance" and index.classes == ["object"] and index.problems == []
    rec = index.records[0]
    assert rec.segments == [{"id": 1, "category_id": 0}, {"id": 2, "category_id": 0}]
    np.testing.assert_array_equal(rec.boxes, [[2, 1, 6, 4], [10, 5, 13, 12]])
    masks = load_sample(rec, index)["masks"].numpy()
    np.testing.assert_array_equal(masks, np.stack([build.instance_ids() == 1, build.instance_ids() == 2]))


def test_coco_panoptic_segments_things_and_semantic_map(build, tmp_path):
    index = read_coco_panoptic(build.panoptic(tmp_path / "pan"))
    assert index.classes == ["person", "sky"] and index.thing_classes == [True, False]
    assert index.problems == []
    rec = index.records[0]
    assert rec.image_id == 9 and rec.mask_path.name == "pic.png"
    assert [(s["id"], s["category_id"], s["iscrowd"]) for s in rec.segments] == [(300, 1, 0), (70001, 0, 0),
                                                                                (5, 0, 1)]
    np.testing.assert_array_equal(rec.boxes, [[0, 0, 14, 5], [2, 6, 6, 9], [8, 6, 12, 9]])
    sample = load_sample(rec, index)
    ids = build.panoptic_ids()
    expected = np.full(ids.shape, IGNORE_INDEX)
    expected[ids == 300], expected[(ids == 70001) | (ids == 5)] = 1, 0
    np.testing.assert_array_equal(sample["semantic"].numpy(), expected)
    np.testing.assert_array_equal(sample["masks"].numpy()[1], ids == 70001)


def test_panoptic_problems(build, tmp_path):
    path = build.panoptic(tmp_path / "pan")
    data = json.loads(path.read_text())
    data["annotations"][0]["segments_info"][2]["category_id"] = 77
    data["images"].append({"id": 10, "file_name": "pic.jpg", "width": 14, "height": 10})
    path.write_text(json.dumps(data))
    index = read_coco_panoptic(path)
    assert where(index) == [("panoptic.json", "image 9 segment 5", 0), ("panoptic.json", "image 10", 1)]


# --------------------------------------------------------------------------------------------------
# Autodetection and open_dataset


EXPECTED = {"coco": ("coco", "detect"), "instance": ("coco", "instance"), "yolo": ("yolo", "detect"),
            "voc": ("voc", "detect"), "masks": ("masks", "segment"),
            "instance-masks": ("instance-masks", "instance"), "typed-instance": ("instance-masks", "instance"),
            "coco-panoptic": ("coco-panoptic", "panoptic"), "imagefolder": ("imagefolder", "classify")}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_autodetect_every_layout(layouts, name):
    index = open_dataset(layouts[name])
    assert (index.format, index.task) == EXPECTED[name] and len(index.records) > 0
    assert index.format in FORMATS


def test_autodetect_files_and_errors(layouts, tmp_path):
    assert detect_format(layouts["coco-panoptic"] / "panoptic.json")[0] == "coco-panoptic"
    assert detect_format(layouts["coco"] / "annotations.json")[0] == "coco"
    assert detect_format(layouts["yolo"] / "data.yaml")[0] == "yolo"
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="(?s)no dataset layout recognised.*ImageFolder"):
        open_dataset(tmp_path / "nothing")
    with pytest.raises(DataError, match="not found"):
        open_dataset(tmp_path / "missing")
    (layouts["yolo"] / "data.yaml").unlink()  # images/ and labels/ alone are not two classes
    with pytest.raises(DataError, match="found images/ but no annotations"):
        open_dataset(layouts["yolo"])


def test_open_dataset_forced_format_options_and_task(layouts):
    index = open_dataset(layouts["coco"], format="coco", image_root=layouts["coco"] / "images")
    assert index.format == "coco" and index.problems == []
    assert open_dataset(layouts["instance"], task="detect").task == "detect"
    with pytest.raises(DataError, match="cannot be used for segment"):
        open_dataset(layouts["voc"], task="segment")
    with pytest.raises(ConfigError, match="colour"):
        open_dataset(layouts["voc"], colour="red")
    with pytest.raises(ConfigError, match="unknown dataset format"):
        open_dataset(layouts["voc"], format="kitti")


def test_readers_leave_their_input_unchanged(build, layouts):
    root = layouts["coco"].parent
    before = build.digest(root)
    for name in EXPECTED:
        open_dataset(layouts[name])
    assert build.digest(root) == before


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_reader_feeds_zir_dataset_with_contract_samples(layouts, name):
    index = open_dataset(layouts[name])
    dataset = ZirDataset(index)
    for i in range(len(dataset)):
        sample = dataset[i]
        image = sample["image"]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape[0] == 3
        H, W = image.shape[-2:]
        assert isinstance(sample["image_id"], int) and Path(sample["path"]).is_file()
        if index.task == "classify":
            assert isinstance(sample["label"], int) and 0 <= sample["label"] < len(index.classes)
        if index.task in ("detect", "instance", "panoptic"):
            boxes, labels = sample["boxes"], sample["labels"]
            assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.dtype == torch.float32
            assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and tuple(boxes.canvas_size) == (H, W)
            assert labels.dtype == torch.int64 and labels.shape == (len(boxes),)
            assert sample["iscrowd"].dtype == torch.bool and sample["iscrowd"].shape == (len(boxes),)
            assert ((labels >= 0) & (labels < len(index.classes))).all()
        if index.task in ("instance", "panoptic"):
            masks = sample["masks"]
            assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8
            assert masks.shape == (len(sample["boxes"]), H, W)
        if index.task in ("segment", "panoptic"):
            semantic = sample["semantic"]
            assert isinstance(semantic, tv_tensors.Mask) and semantic.dtype == torch.int64
            assert semantic.shape == (H, W)
            valid = (semantic < len(index.classes)) | (semantic == IGNORE_INDEX)
            assert bool(valid.all())


def test_voc_difficult_flags_reach_the_sample_for_evaluation(build, tmp_path):
    """VOC difficult objects are trained on (kept in boxes and labels) and flagged for evaluation."""
    from zir.data.dataset import load_sample

    index = read_voc(build.voc(tmp_path / "voc"))
    p = next(r for r in index.records if r.path.name == "p.jpg")
    sample = load_sample(p, index)
    assert len(sample["boxes"]) == 2 and sample["difficult"].tolist() == [False, True]
