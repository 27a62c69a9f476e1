"""`zir data stats`: hand-computed counts on tiny datasets, and the figure is a real PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zir.data.contract import DatasetIndex, Record
from zir.data.stats import dataset_stats, format_stats, plot_stats


def write_image(path: Path, w: int, h: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 120, 30)).save(path)
    return path


def box(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y + h]


@pytest.fixture
def detect(tmp_path: Path) -> DatasetIndex:
    """3 images; box areas chosen on both sides of COCO's 32^2 and 96^2 thresholds."""
    records = [
        # 10x10 = 100 (small), 31x33 = 1023 (small), 32x32 = 1024 (medium: the threshold is medium)
        Record(path=write_image(tmp_path / "a.jpg", 200, 150), width=200, height=150,
               boxes=[box(0, 0, 10, 10), box(20, 20, 31, 33), box(60, 60, 32, 32)], labels=[0, 0, 1]),
        # 95x97 = 9215 (medium), 96x96 = 9216 (large)
        Record(path=write_image(tmp_path / "b.jpg", 320, 100), width=320, height=100,
               boxes=[box(0, 0, 95, 97), box(100, 0, 96, 96)], labels=[1, 1]),
        # no objects; its size is not stated, so it comes from the file header
        Record(path=write_image(tmp_path / "c.jpg", 64, 480)),
    ]
    return DatasetIndex(records, ["cat", "dog", "bird"], "detect", "coco", tmp_path)


def test_detect_counts(detect):
    s = dataset_stats(detect)
    assert (s.num_images, s.num_objects) == (3, 5)
    assert s.per_class == {"cat": 2, "dog": 3, "bird": 0}
    assert s.objects_per_image == {0: 1, 2: 1, 3: 1}
    assert (s.objects_min, s.objects_max) == (0, 3)
    assert s.objects_mean == pytest.approx(5 / 3)
    assert s.area_ranges == {"small": 2, "medium": 2, "large": 1}
    assert np.allclose(np.sort(s.sqrt_areas), np.sqrt([100, 1023, 1024, 9215, 9216]))
    assert (s.min_size, s.max_size) == ((64, 100), (320, 480))
    assert s.pixel_fraction == {} and s.ignore_fraction is None


def test_detect_text(detect):
    text = format_stats(dataset_stats(detect))
    assert "images: 3    objects: 5" in text
    assert "image size (W x H): min 64x100, max 320x480" in text
    assert "objects per image: min 0, mean 1.67, max 3" in text
    assert "small (< 32^2 px) 2, medium 2, large (>= 96^2 px) 1" in text
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[-3:]}
    assert rows == {"cat": ["2", "40.0%"], "dog": ["3", "60.0%"], "bird": ["0", "0.0%"]}


def test_unknown_class_ids_are_counted_apart(detect):
    detect.records[1].labels[0] = 7
    assert dataset_stats(detect).per_class == {"cat": 2, "dog": 2, "bird": 0, "unknown id 7": 1}


def test_instance_uses_mask_area(tmp_path):
    # A 40x40 box (1600 px: medium) around a 20x20 polygon (400 px: small): COCO counts the mask.
    rec = Record(path=write_image(tmp_path / "a.jpg", 64, 64), width=64, height=64,
                 boxes=[box(0, 0, 40, 40), box(0, 0, 40, 40)], labels=[0, 0],
                 segmentations=[[[0, 0, 20, 0, 20, 20, 0, 20]], None])
    s = dataset_stats(DatasetIndex([rec], ["blob"], "instance", "coco", tmp_path))
    assert s.area_ranges == {"small": 1, "medium": 1, "large": 0}
    assert sorted(s.sqrt_areas.tolist()) == [20.0, 40.0]


def test_panoptic_uses_segment_area(tmp_path):
    rec = Record(path=write_image(tmp_path / "a.jpg", 200, 200), width=200, height=200,
                 segments=[{"id": 1, "category_id": 0, "area": 500}, {"id": 2, "category_id": 1, "area": 30000},
                           {"id": 3, "category_id": 1, "bbox": [0, 0, 40, 40]}])
    s = dataset_stats(DatasetIndex([rec], ["person", "sky"], "panoptic", "coco_panoptic", tmp_path))
    assert s.num_objects == 3 and s.per_class == {"person": 1, "sky": 2}
    assert s.area_ranges == {"small": 1, "medium": 1, "large": 1}


def test_classify_counts_images_per_class(tmp_path):
    records = [Record(path=write_image(tmp_path / f"{k}.jpg", 32 + k, 32), label=k % 2) for k in range(5)]
    s = dataset_stats(DatasetIndex(records, ["cat", "dog", "emu"], "classify", "imagefolder", tmp_path))
    assert s.per_class == {"cat": 3, "dog": 2, "emu": 0}
    assert s.num_objects == 0 and s.objects_per_image == {}
    assert (s.min_size, s.max_size) == ((32, 32), (36, 32))
    text = format_stats(s)
    assert "objects" not in text and "images" in text.splitlines()[-4]


def segment_index(tmp_path: Path, value_map: dict[int, int] | None = None) -> DatasetIndex:
    masks = [np.array([[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [255, 255, 255, 255]], np.uint8),
             np.array([[0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 9, 9], [0, 0, 9, 9]], np.uint8)]
    records = []
    for k, m in enumerate(masks):
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(m).save(tmp_path / "masks" / f"{k}.png")
        records.append(Record(path=write_image(tmp_path / f"{k}.jpg", 4, 4), mask_path=tmp_path / "masks" / f"{k}.png"))
    return DatasetIndex(records, ["ground", "road", "car"], "segment", "masks", tmp_path, value_map=value_map)


def test_segment_pixel_fractions(tmp_path):
    # 32 pixels: ground 8 + 8, road 4, ignore 4 (255) + 8 (9 is no class id)
    s = dataset_stats(segment_index(tmp_path))
    assert s.pixel_fraction == {"ground": 0.5, "road": 0.125, "car": 0.0}
    assert s.ignore_fraction == 0.375
    assert s.per_class == {"ground": 2, "road": 1, "car": 0}  # images containing the class
    # With a value map, 9 is car and 1 is unmapped (ignore).
    s = dataset_stats(segment_index(tmp_path, value_map={0: 0, 9: 2}))
    assert s.pixel_fraction == {"ground": 0.5, "road": 0.0, "car": 0.25}
    assert s.ignore_fraction == 0.25
    assert "ignored pixels: 25.0%" in format_stats(s)


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        img.load()
        assert img.size[0] > 100 and img.size[1] > 100


def test_plot_detect(detect, tmp_path):
    out = plot_stats(dataset_stats(detect), tmp_path / "plots" / "stats.png")
    assert out == tmp_path / "plots" / "stats.png"
    assert_png(out)


def test_plot_classify_and_segment(tmp_path):
    records = [Record(path=write_image(tmp_path / f"{k}.jpg", 8, 8), label=k % 3) for k in range(6)]
    s = dataset_stats(DatasetIndex(records, [f"class{k}" for k in range(12)], "classify", "imagefolder", tmp_path))
    assert_png(plot_stats(s, tmp_path / "classify.png"))
    assert_png(plot_stats(dataset_stats(segment_index(tmp_path)), tmp_path / "segment.png"))


def test_plot_empty_dataset(tmp_path):
    s = dataset_stats(DatasetIndex([], ["cat"], "detect", "coco", tmp_path))
    assert s.num_images == 0 and s.min_size is None
    assert_png(plot_stats(s, tmp_path / "empty.png"))
    assert "images: 0" in format_stats(s)
