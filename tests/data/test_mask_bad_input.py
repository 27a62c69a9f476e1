"""Bad mask input: a value that maps to no class or a mask of the wrong size stops with the file named;
an object id listed for an instance PNG but absent from it is skipped with a warning."""

from __future__ import annotations

import numpy as np
import pytest

from zir.data.contract import IGNORE_INDEX
from zir.data.dataset import ZirDataset, load_sample
from zir.data.formats.masks import read_instance_masks, read_masks
from zir.errors import DataError


def test_value_missing_from_classes_yaml_values_names_the_file_and_the_value(build, tmp_path):
    m = np.array([[0, 255, 128], [255, 0, 77]], np.uint8)
    root = build.masks(tmp_path / "m", [m])
    (root / "classes.yaml").write_text("names: [membrane, cell]\nvalues: {0: 0, 255: 1}\n")
    index = read_masks(root)
    with pytest.raises(DataError) as e:
        load_sample(index.records[0], index)
    assert e.value.file == str(index.records[0].mask_path)
    assert "pixel values 77, 128 " in str(e.value) and "classes.yaml" in str(e.value) and "255" in str(e.value)
    # training with skip_bad leaves the sample out with the same message instead of stopping
    assert ZirDataset(index, skip_bad=True)[0] == {"bad": str(e.value)}


def test_value_above_the_class_list_is_an_error(build, tmp_path):
    m = np.array([[0, 1, 2], [7, 255, 0]], np.uint8)
    root = build.masks(tmp_path / "m", [m])
    (root / "classes.yaml").write_text("names: [sky, road, car]\n")
    index = read_masks(root)
    with pytest.raises(DataError, match=r"s0\.png: pixel values 7 are not class ids 0\.\.2"):
        load_sample(index.records[0], index)


def test_255_is_ignored_unless_mapped(build, tmp_path):
    m = np.array([[0, 128, 255]], np.uint8)
    root = build.masks(tmp_path / "m", [m])
    (root / "classes.yaml").write_text("names: [bg, fg]\nvalues: {0: 0, 128: 1}\n")
    index = read_masks(root)
    np.testing.assert_array_equal(load_sample(index.records[0], index)["semantic"].numpy(), [[0, 1, IGNORE_INDEX]])


def test_mask_of_another_size_names_the_file_and_both_sizes(build, tmp_path):
    root = build.masks(tmp_path / "m", [np.zeros((4, 6), np.uint8)])
    build.image(root / "images" / "s0.jpg", 8, 5)  # the image is now 8x5, its mask 6x4
    index = read_masks(root)
    with pytest.raises(DataError) as e:
        load_sample(index.records[0], index)
    assert e.value.file == str(index.records[0].mask_path)
    assert "mask is 6x4" in str(e.value) and "image s0.jpg is 8x5" in str(e.value)


def test_instance_id_without_pixels_is_skipped_with_a_warning(build, tmp_path):
    index = read_instance_masks(build.instance_masks(tmp_path / "ped"))
    rec = index.records[0]
    # a listed object whose id the PNG does not hold (e.g. the PNG was edited after reading)
    rec.segments.insert(1, {"id": 9, "category_id": 0})
    rec.boxes = np.insert(rec.boxes, 1, [[0, 0, 3, 3]], axis=0)
    rec.labels, rec.iscrowd = np.zeros(3, np.int64), np.zeros(3, bool)
    with pytest.warns(UserWarning, match=r"FudanPed00001_mask\.png: object id\(s\) \[9\] have no pixels"):
        sample = load_sample(rec, index)
    ids = build.instance_ids()
    np.testing.assert_array_equal(sample["masks"].numpy(), np.stack([ids == 1, ids == 2]))
    np.testing.assert_array_equal(sample["boxes"].numpy(), [[2, 1, 6, 4], [10, 5, 13, 12]])
    assert type(sample["boxes"]).__name__ == "BoundingBoxes" and sample["boxes"].canvas_size == (12, 16)
    assert sample["labels"].tolist() == [0, 0] and sample["iscrowd"].tolist() == [False, False]
