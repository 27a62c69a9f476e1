"""`zir data check`: every kind of broken dataset is caught and located (file + record)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from zir.data.check import CheckReport, bad_records, check_dataset, split_source, validate_record
from zir.data.contract import DatasetIndex, Problem, Record
from zir.data.dataset import encode_mask

W, H = 100, 80  # every test image is 100 wide, 80 high unless said otherwise


def write_image(path: Path, w: int = W, h: int = H, fmt: str = "JPEG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Noise, so a JPEG has enough entropy-coded data for a cut to land inside it.
    pixels = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def detect_index(tmp_path: Path, n: int = 3, fmt: str = "yolo") -> DatasetIndex:
    """A clean detection dataset: n images, one 'cat' and one 'dog' box each, well inside."""
    ann = tmp_path / "ann.json"
    records = []
    for k in range(n):
        img = write_image(tmp_path / "images" / f"img{k}.jpg")
        records.append(Record(path=img, image_id=k, width=W, height=H,
                              boxes=[[10, 10, 50, 40], [60, 20, 100, 80]], labels=[0, 1],
                              source=f"{ann}:image {k}"))
    return DatasetIndex(records, ["cat", "dog"], "detect", fmt, tmp_path)


def errors_of(report: CheckReport) -> list[Problem]:
    return report.errors()


def only_error(report: CheckReport) -> Problem:
    errors = report.errors()
    assert len(errors) == 1, report.format_text()
    return errors[0]


def tree_hash(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------------
# A clean dataset, and what the report looks like


def test_clean_dataset_has_no_problems(tmp_path):
    index = detect_index(tmp_path)
    report = check_dataset(index, progress=False)
    assert report.problems == [], report.format_text()
    assert report.ok
    assert (report.num_images, report.num_objects) == (3, 6)
    assert report.format_text() == "3 images, 6 objects: 0 errors, 0 warnings"


def test_inputs_are_unchanged(tmp_path):
    index = detect_index(tmp_path)
    (tmp_path / "images" / "img1.jpg").write_bytes(b"not a jpeg")
    index.records[0].boxes[0] = [-20, 0, 10, 10]
    before = tree_hash(tmp_path)
    report = check_dataset(index, progress=False)
    assert len(report.errors()) == 2
    assert tree_hash(tmp_path) == before


def test_problems_are_sorted_by_file_then_record_and_formatted(tmp_path):
    index = detect_index(tmp_path)
    index.records[2].boxes[1] = [0, 0, 0, 10]
    index.records[0].labels[0] = 7
    (tmp_path / "images" / "img1.jpg").unlink()
    report = check_dataset(index, progress=False)
    ann = str(tmp_path / "ann.json")
    assert [(p.file, p.record) for p in report.problems] == [
        (ann, 0), (ann, 2), (str(tmp_path / "images" / "img1.jpg"), 1)]
    lines = report.format_text().splitlines()
    assert lines[0] == (f"error: {ann}:image 0, object 0: class id 7 is not one of the 2 classes (0..1); "
                        "fix the label or add the class")
    assert lines[1].startswith(f"error: {ann}:image 2, object 1: box [0, 0, 0, 10] has zero or negative size")
    assert lines[-1] == "3 images, 6 objects: 3 errors, 0 warnings"
    assert bad_records(index, report) == {0, 1, 2}


# --------------------------------------------------------------------------------------------------
# Images


def test_unreadable_image(tmp_path):
    index = detect_index(tmp_path)
    path = tmp_path / "images" / "img1.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    p = only_error(check_dataset(index, progress=False))
    assert (p.file, p.record) == (str(path), 1)
    assert "cannot read image" in p.message and "ann.json:image 1" in p.message


@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_jpeg(tmp_path, monkeypatch, load_truncated):
    index = detect_index(tmp_path)
    path = tmp_path / "images" / "img2.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    # The header is intact: only a full decode can tell.
    assert Image.open(path).size == (W, H)
    # Someone in the process asked PIL to accept truncated files: the check must not.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    p = only_error(check_dataset(index, progress=False))
    assert (p.file, p.record) == (str(path), 2)
    assert "truncated" in p.message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is load_truncated  # restored


def test_truncated_jpeg_needs_open_images(tmp_path):
    index = detect_index(tmp_path)
    path = tmp_path / "images" / "img2.jpg"
    path.write_bytes(path.read_bytes()[:-2000])
    assert check_dataset(index, open_images=False, progress=False).ok  # headers only: not seen
    assert not check_dataset(index, open_images=True, progress=False).ok


def test_missing_image(tmp_path):
    index = detect_index(tmp_path)
    path = tmp_path / "images" / "img0.jpg"
    path.unlink()
    for open_images in (True, False):
        p = only_error(check_dataset(index, open_images=open_images, progress=False))
        assert (p.file, p.record) == (str(path), 0)
        assert "not found" in p.message


def test_image_size_differs_from_annotation(tmp_path):
    index = detect_index(tmp_path)
    write_image(tmp_path / "images" / "img1.jpg", w=120, h=90)
    for open_images in (True, False):
        p = only_error(check_dataset(index, open_images=open_images, progress=False))
        assert (p.file, p.where, p.record) == (str(tmp_path / "ann.json"), "image 1", 1)
        assert "100x80" in p.message and "120x90" in p.message


def test_image_size_swapped_hints_at_exif(tmp_path):
    index = detect_index(tmp_path)
    write_image(tmp_path / "images" / "img1.jpg", w=H, h=W)
    index.records[1].boxes = np.zeros((0, 4), np.float32)
    index.records[1].labels = np.zeros((0,), np.int64)
    assert "EXIF" in only_error(check_dataset(index, progress=False)).message


# --------------------------------------------------------------------------------------------------
# Boxes and classes


@pytest.mark.parametrize("box, words", [
    ([50, 40, 110, 60], "outside the 100x80 image"),
    ([-5, 10, 20, 30], "outside the 100x80 image"),
    ([20, 30, 20, 50], "zero or negative size"),
    ([20, 30, 40, 25], "zero or negative size"),
    ([np.nan, 10, 20, 30], "NaN or infinite"),
    ([10, 10, np.inf, 30], "NaN or infinite"),
])
def test_bad_box(tmp_path, box, words):
    index = detect_index(tmp_path)
    index.records[1].boxes[1] = box
    p = only_error(check_dataset(index, progress=False))
    assert (p.file, p.where, p.record) == (str(tmp_path / "ann.json"), "image 1, object 1", 1)
    assert words in p.message


def test_box_within_one_pixel_tolerance_is_fine(tmp_path):
    index = detect_index(tmp_path)
    index.records[0].boxes[1] = [-0.9, -1.0, W + 1.0, H + 0.5]
    assert check_dataset(index, progress=False).problems == []
    index.records[0].boxes[1] = [0, 0, W + 1.5, H]
    assert only_error(check_dataset(index, progress=False)).record == 0


def test_bounds_use_the_image_when_the_annotation_states_no_size(tmp_path):
    index = detect_index(tmp_path)
    index.records[2].width = index.records[2].height = None
    index.records[2].boxes[0] = [0, 0, W + 5, 10]
    p = only_error(check_dataset(index, progress=False))
    assert (p.record, "outside the 100x80 image" in p.message) == (2, True)


@pytest.mark.parametrize("bad_id", [2, -1])
def test_unknown_class_id(tmp_path, bad_id):
    index = detect_index(tmp_path)
    index.records[2].labels[0] = bad_id
    p = only_error(check_dataset(index, progress=False))
    assert (p.where, p.record) == ("image 2, object 0", 2)
    assert f"class id {bad_id} " in p.message


def test_labels_and_boxes_differ_in_number(tmp_path):
    index = detect_index(tmp_path)
    index.records[0].labels = np.array([0], np.int64)
    p = only_error(check_dataset(index, progress=False))
    assert (p.where, p.record) == ("image 0", 0)
    assert "1 class ids for 2 boxes" in p.message


def test_classify_label_unknown_or_missing(tmp_path):
    records = [Record(path=write_image(tmp_path / "cat" / "a.jpg"), label=0),
               Record(path=write_image(tmp_path / "dog" / "b.jpg"), label=5),
               Record(path=write_image(tmp_path / "dog" / "c.jpg"), label=None)]
    index = DatasetIndex(records, ["cat", "dog"], "classify", "imagefolder", tmp_path)
    report = check_dataset(index, progress=False)
    assert [(p.file, p.record) for p in report.errors()] == [
        (str(tmp_path / "dog" / "b.jpg"), 1), (str(tmp_path / "dog" / "c.jpg"), 2)]
    assert "class id 5" in report.errors()[0].message and "no class label" in report.errors()[1].message
    # 'dog' has only broken samples: no valid one
    assert [p.where for p in report.warnings()] == ["class 1 'dog'"]


def test_class_without_samples_is_a_warning(tmp_path):
    index = detect_index(tmp_path)
    index.classes = ["cat", "dog", "bird"]
    report = check_dataset(index, progress=False)
    assert report.ok and report.errors() == []
    [w] = report.warnings()
    assert (w.file, w.where, w.severity, w.record) == (str(tmp_path), "class 2 'bird'", "warning", None)
    assert bad_records(index, report) == set()


def test_empty_dataset(tmp_path):
    index = DatasetIndex([], ["cat"], "detect", "coco", tmp_path)
    report = check_dataset(index, progress=False)
    p = only_error(report)
    assert p.file == str(tmp_path) and "no images" in p.message
    assert report.warnings() == []  # "no sample of cat" would only repeat it


# --------------------------------------------------------------------------------------------------
# Duplicated files


def test_same_path_listed_twice(tmp_path):
    index = detect_index(tmp_path)
    index.records.append(Record(path=index.records[0].path, image_id=9, width=W, height=H,
                                source=f"{tmp_path / 'ann.json'}:image 9"))
    p = only_error(check_dataset(index, progress=False))
    assert (p.where, p.record) == ("image 9", 3)
    assert "listed twice" in p.message and "image 0" in p.message


@pytest.mark.parametrize("fmt, severity", [("coco", "error"), ("yolo", "warning")])
def test_same_file_name_in_two_folders(tmp_path, fmt, severity):
    index = detect_index(tmp_path, fmt=fmt)
    other = write_image(tmp_path / "more" / "img0.jpg")
    index.records.append(Record(path=other, image_id=3, width=W, height=H,
                                source=f"{tmp_path / 'ann.json'}:image 3"))
    report = check_dataset(index, progress=False)
    [p] = report.problems
    assert (p.where, p.record, p.severity) == ("image 3", 3, severity)
    assert "img0.jpg" in p.message and str(other) in p.message


# --------------------------------------------------------------------------------------------------
# Masks


def segment_index(tmp_path: Path, mask_size: tuple[int, int] = (W, H)) -> DatasetIndex:
    img = write_image(tmp_path / "img" / "a.jpg")
    mask = np.zeros((mask_size[1], mask_size[0]), np.uint8)
    mask[: mask_size[1] // 2] = 1
    mask_path = tmp_path / "masks" / "a.png"
    mask_path.parent.mkdir()
    Image.fromarray(mask).save(mask_path)
    rec = Record(path=img, mask_path=mask_path, source=str(img))
    return DatasetIndex([rec], ["background", "road"], "segment", "masks", tmp_path)


def test_semantic_mask_clean(tmp_path):
    assert check_dataset(segment_index(tmp_path), progress=False).problems == []


def test_semantic_mask_size_differs(tmp_path):
    index = segment_index(tmp_path, mask_size=(50, 40))
    for open_images in (True, False):
        p = only_error(check_dataset(index, open_images=open_images, progress=False))
        assert (p.file, p.record) == (str(tmp_path / "masks" / "a.png"), 0)
        assert "mask is 50x40" in p.message and "100x80" in p.message


def test_semantic_mask_size_from_the_masks_reader_is_one_problem(tmp_path):
    # The masks reader states the size it read from the mask: the image is then the odd one out.
    index = segment_index(tmp_path, mask_size=(50, 40))
    index.records[0].width, index.records[0].height = 50, 40
    p = only_error(check_dataset(index, progress=False))
    assert p.file == str(tmp_path / "masks" / "a.png") and "mask is 50x40" in p.message


def test_semantic_mask_missing_as_the_reader_reports_it(tmp_path):
    index = segment_index(tmp_path)
    rec = index.records[0]
    rec.mask_path = None
    index.problems = [Problem(str(rec.path), "", "no mask in masks/ (a.png); add it", record=0)]
    assert check_dataset(index, progress=False).errors() == index.problems


def test_semantic_mask_missing_or_unreadable(tmp_path):
    index = segment_index(tmp_path)
    index.records[0].mask_path.write_bytes(b"\x89PNG broken")
    p = only_error(check_dataset(index, progress=False))
    assert (p.file, p.record) == (str(tmp_path / "masks" / "a.png"), 0)
    index.records[0].mask_path.unlink()
    assert "not found" in only_error(check_dataset(index, progress=False)).message
    index.records[0].mask_path = None
    assert "no mask PNG" in only_error(check_dataset(index, progress=False)).message


def test_semantic_mask_values_that_are_not_classes(tmp_path):
    index = segment_index(tmp_path)
    mask = np.asarray(Image.open(index.records[0].mask_path)).copy()
    mask[0, :3] = (7, 255, 9)  # 255 is "ignore": fine
    Image.fromarray(mask).save(index.records[0].mask_path)
    report = check_dataset(index, progress=False)
    assert not report.ok  # training stops on them too (zir.data.dataset), so the check calls them errors
    [e] = report.errors()
    assert e.record == 0 and "pixel values 7, 9 are not classes" in e.message and "classes.yaml" in e.message
    # With a value map (VOC-like colours -> ids), values outside it are the strange ones.
    index.value_map = {0: 0, 1: 1, 7: 1}
    [e] = check_dataset(index, progress=False).errors()
    assert "pixel values 9 " in e.message


def test_semantic_class_without_pixels(tmp_path):
    index = segment_index(tmp_path)
    index.classes = ["background", "road", "car"]
    [w] = check_dataset(index, progress=False).warnings()
    assert w.where == "class 2 'car'"
    # Without decoding the masks nothing is known about classes, so nothing is claimed.
    assert check_dataset(index, open_images=False, progress=False).problems == []


def instance_index(tmp_path: Path, rle_hw: tuple[int, int]) -> DatasetIndex:
    index = detect_index(tmp_path, n=1)
    mask = np.zeros(rle_hw, np.uint8)
    mask[10:40, 10:50] = 1
    index.records[0].segmentations = [encode_mask(mask), [[10, 10, 50, 10, 50, 40, 10, 40]]]
    index.task = "instance"
    return index


def test_rle_size(tmp_path):
    assert check_dataset(instance_index(tmp_path, (H, W)), progress=False).problems == []
    p = only_error(check_dataset(instance_index(tmp_path, (H // 2, W)), progress=False))
    assert (p.file, p.where, p.record) == (str(tmp_path / "ann.json"), "image 0, object 0", 0)
    assert f"RLE size [{H // 2}, {W}]" in p.message


def test_degenerate_polygon(tmp_path):
    index = instance_index(tmp_path, (H, W))
    index.records[0].segmentations[1] = [[10, 10, 50, 10]]
    p = only_error(check_dataset(index, progress=False))
    assert p.where == "image 0, object 1" and "at least 3" in p.message
    index.records[0].segmentations[1] = [10, 10, 50, 10, 50, 40]  # flat: one bracket level missing
    p = only_error(check_dataset(index, progress=False))
    assert p.where == "image 0, object 1" and "list of polygons" in p.message


def panoptic_index(tmp_path: Path, png_size: tuple[int, int] = (W, H)) -> DatasetIndex:
    img = write_image(tmp_path / "images" / "a.jpg")
    ids = np.zeros((png_size[1], png_size[0], 3), np.uint8)
    ids[:20, :, 0] = 5  # segment id 5 = R + 256 G + 256^2 B
    png = tmp_path / "panoptic" / "a.png"
    png.parent.mkdir()
    Image.fromarray(ids).save(png)
    rec = Record(path=img, width=W, height=H, mask_path=png,
                 segments=[{"id": 5, "category_id": 0, "iscrowd": 0}, {"id": 6, "category_id": 1}],
                 source=f"{tmp_path / 'panoptic.json'}:image 0")
    return DatasetIndex([rec], ["person", "sky"], "panoptic", "coco_panoptic", tmp_path)


def test_panoptic_png(tmp_path):
    report = check_dataset(panoptic_index(tmp_path), progress=False)
    assert report.ok and report.num_objects == 2
    [w] = report.warnings()  # segment 6 is listed but has no pixel
    assert (w.file, w.record) == (str(tmp_path / "panoptic" / "a.png"), 0) and "segment id 6" in w.message


def test_panoptic_png_size_and_category(tmp_path):
    index = panoptic_index(tmp_path, png_size=(W, H + 1))
    index.records[0].segments[1]["category_id"] = 3
    report = check_dataset(index, progress=False)
    assert [(p.file, p.where) for p in report.errors()] == [
        (str(tmp_path / "panoptic.json"), "image 0"), (str(tmp_path / "panoptic" / "a.png"), "")]
    assert "segment 6: class id 3" in report.errors()[0].message
    assert "mask is 100x81" in report.errors()[1].message


# --------------------------------------------------------------------------------------------------
# Working with the readers


def test_reader_problems_are_kept_and_not_repeated(tmp_path):
    index = detect_index(tmp_path)
    index.records[1].boxes[0] = [0, 0, 500, 10]
    # The reader validated with the same function, and found something the check cannot see.
    index.problems = validate_record(index.records[1], index, 1, (H, W)) + [
        Problem(str(tmp_path / "ann.json"), "line 3", "unparseable annotation; fix it", record=None)]
    report = check_dataset(index, progress=False)
    assert len(report.errors()) == 2, report.format_text()
    assert bad_records(index, report) == {1}


def test_a_finding_the_reader_made_in_the_same_words_is_listed_once(tmp_path):
    index = detect_index(tmp_path)
    index.classes.append("bird")
    ours = check_dataset(index, progress=False).problems
    index.problems = list(ours)  # e.g. a reader warning about an empty class, with the shared wording
    assert check_dataset(index, progress=False).problems == ours


def test_image_the_reader_could_not_read_is_not_reported_again(tmp_path):
    index = detect_index(tmp_path)
    path = tmp_path / "images" / "img2.jpg"
    path.unlink()
    index.problems = [Problem(str(path), "", "image file not found (listed in ann.json); restore it",
                              record=2)]
    report = check_dataset(index, progress=False)
    assert report.problems == index.problems


def test_validate_record_without_image_size_skips_bounds(tmp_path):
    index = detect_index(tmp_path, n=1)
    rec = index.records[0]
    rec.boxes[0] = [0, 0, 1000, 1000]
    assert validate_record(rec, index, 0, None) == []
    [p] = validate_record(rec, index, 0, (H, W))
    assert (p.where, p.record) == ("image 0, object 0", 0)


def test_split_source():
    assert split_source("/data/ann.json:image 3") == ("/data/ann.json", "image 3")
    assert split_source("/data/labels/a.txt") == ("/data/labels/a.txt", "")
    assert split_source("C:\\data\\a.txt") == ("C:\\data\\a.txt", "")


def test_bad_records_ignores_warnings_and_dataset_problems(tmp_path):
    index = detect_index(tmp_path)
    report = CheckReport([Problem("a", "", "x", "warning", record=0), Problem("b", "", "y", record=None),
                          Problem("c", "", "z", record=2)], 3, 0)
    assert bad_records(index, report) == {2}


def test_jpeg_fixture_is_a_real_jpeg(tmp_path):
    # Guards the truncation tests: they mean something only if the intact file decodes.
    path = write_image(tmp_path / "x.jpg")
    with Image.open(io.BytesIO(path.read_bytes())) as img:
        img.load()
        assert img.format == "JPEG" and img.size == (W, H)


# --------------------------------------------------------------------------------------------------
# End to end with the COCO reader


def test_reader_wording_is_not_repeated(tmp_path):
    index = detect_index(tmp_path)
    index.records[1].boxes[0] = [0, 0, 500, 10]
    # A reader that words the same finding its own way, at its own location.
    index.problems = [Problem(str(tmp_path / "ann.json"), "annotation 4", "box lies outside the image",
                              record=1)]
    report = check_dataset(index, progress=False)
    assert report.problems == index.problems


def write_broken_coco(root: Path) -> Path:
    """A COCO dataset with one of each problem; returns the JSON path."""
    images = root / "images"
    write_image(images / "good.jpg")
    write_image(images / "boxes.jpg")
    write_image(images / "rle.jpg")
    (images / "noise.jpg").write_bytes(np.random.default_rng(2).integers(0, 256, 3000, np.uint8).tobytes())
    data = write_image(images / "cut.jpg").read_bytes()
    (images / "cut.jpg").write_bytes(data[: len(data) // 2])
    names = ["good.jpg", "boxes.jpg", "noise.jpg", "cut.jpg", "gone.jpg", "rle.jpg", "good.jpg"]
    wrong_rle = np.zeros((H // 2, W), np.uint8)
    wrong_rle[:10, :10] = 1

    def ann(i, image_id, bbox, cat=1, **kw):
        return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": 0, **kw}

    coco = {
        "images": [{"id": k + 1, "file_name": n, "width": W, "height": H} for k, n in enumerate(names)],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}],
        "annotations": [
            ann(1, 1, [10, 10, 20, 20]), ann(2, 1, [30, 10, 20, 20], cat=2),
            ann(3, 2, [90, 70, 30, 30]),  # outside the 100x80 image
            ann(4, 2, [10, 10, 0, 5]),  # zero width
            ann(5, 2, [float("nan"), 10, 5, 5]),
            ann(6, 2, [10, 10, 5, 5], cat=99),  # unknown category
            ann(7, 6, [0, 0, 10, 10], segmentation=encode_mask(wrong_rle)),
        ],
    }
    path = root / "annotations.json"
    path.write_text(json.dumps(coco))  # NaN becomes the bare literal NaN, which json reads back
    return path


def expected_coco_locations(root: Path) -> dict[tuple[str, int | None], int]:
    images, ann = root / "images", str(root / "annotations.json")
    return {(str(images / "noise.jpg"), 2): 1, (str(images / "cut.jpg"), 3): 1,
            (str(images / "gone.jpg"), 4): 1, (ann, 1): 4, (ann, 5): 1, (ann, 6): 1}


def located(report: CheckReport) -> dict[tuple[str, int | None], int]:
    found: dict[tuple[str, int | None], int] = {}
    for p in report.errors():
        found[(p.file, p.record)] = found.get((p.file, p.record), 0) + 1
    return found


def test_broken_coco_end_to_end(tmp_path):
    coco = pytest.importorskip("zir.data.formats.coco")
    index = coco.read_coco(write_broken_coco(tmp_path))
    before = tree_hash(tmp_path)
    report = check_dataset(index, progress=False)
    assert tree_hash(tmp_path) == before
    assert located(report) == expected_coco_locations(tmp_path), report.format_text()
    text = report.format_text()
    for words in ("outside the 100x80 image", "zero or negative size", "NaN", "99", "listed twice",
                  "RLE size [40, 100]", "cannot read image", "truncated", "not found"):
        assert words in text, words
    [w] = [p for p in report.warnings() if p.record is None]  # the reader warns about objects too
    assert w.where == "class 2 'bird'"
    assert bad_records(index, report) == {1, 2, 3, 4, 5, 6}


def test_check_path_end_to_end(tmp_path):
    formats = pytest.importorskip("zir.data.formats")
    if not hasattr(formats, "open_dataset"):
        pytest.skip("zir.data.formats.open_dataset is not there yet")
    from zir.data.check import check_path

    report = check_path(write_broken_coco(tmp_path), progress=False)
    assert located(report) == expected_coco_locations(tmp_path), report.format_text()
    (tmp_path / "annotations.json").write_text('{"images": [')
    p = only_error(check_path(tmp_path / "annotations.json", progress=False))
    assert p.file == str(tmp_path / "annotations.json") and p.record is None


def test_check_path_turns_a_reader_error_into_a_problem(tmp_path, monkeypatch):
    import zir.data.formats as formats
    from zir.data.check import check_path
    from zir.errors import DataError

    def unreadable(path, format="auto", task=None, split="train"):
        raise DataError(path, "cannot parse JSON (Expecting value); fix or re-export the file", where="line 3")

    monkeypatch.setattr(formats, "open_dataset", unreadable, raising=False)
    report = check_path(tmp_path / "a.json")
    assert not report.ok and report.num_images == 0
    assert report.format_text().splitlines()[0] == (
        f"error: {tmp_path / 'a.json'}:line 3: cannot parse JSON (Expecting value); fix or re-export the file")
