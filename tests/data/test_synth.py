"""Synthetic scenes: determinism, file layout, the data contract, and the geometry of objects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image, ImageDraw
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from zir.data.dataset import decode_segmentation
from zir.data.image_io import read_image, read_label_png, read_panoptic_png
from zir.data.synth import (
    CLASSES,
    PANOPTIC_CLASSES,
    SEGMENT_CLASSES,
    SHAPES,
    STUFF_CLASSES,
    SynthConfig,
    SynthDataset,
    generate_scene,
    panoptic_segments,
    semantic_map,
    write_synth,
)
from zir.errors import ConfigError, DataError

TASKS = ["classify", "detect", "instance", "segment", "panoptic"]
SIZE = 64


def _draw_whole(label: int, geometry: np.ndarray) -> np.ndarray:
    """bool (SIZE, SIZE) mask of one object drawn whole, from the public shape table."""
    img = Image.new("L", (SIZE, SIZE), 0)
    SHAPES[CLASSES[label]](ImageDraw.Draw(img), *geometry.tolist())
    return np.asarray(img, dtype=bool)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scenes() -> list:
    """A sample of detect scenes, large enough for the statistics below."""
    cfg = SynthConfig(task="detect", image_size=SIZE, seed=3)
    return [generate_scene(cfg, i) for i in range(150)]


# --------------------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("task", TASKS)
def test_write_is_byte_identical_for_the_same_seed(tmp_path: Path, task: str) -> None:
    cfg = SynthConfig(task=task, n=5, seed=7, image_size=SIZE)
    a = _files(write_synth(cfg, tmp_path / "a", progress=False))
    b = _files(write_synth(cfg, tmp_path / "b", progress=False))
    assert a == b
    other = _files(write_synth(SynthConfig(task=task, n=5, seed=8, image_size=SIZE), tmp_path / "c",
                               progress=False))
    images = [k for k in a if k.endswith(".png") and (k.startswith("images/") or task == "classify")]
    assert len(images) == 5
    assert all(a[k] != other.get(k) for k in images)


def test_scene_depends_on_seed_and_index_only() -> None:
    small = SynthConfig(task="instance", n=3, seed=5, image_size=SIZE)
    large = SynthConfig(task="instance", n=1000, seed=5, image_size=SIZE)
    a = [generate_scene(small, i) for i in range(3)]
    b = [generate_scene(large, i) for i in reversed(range(3))][::-1]
    for x, y in zip(a, b):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.masks, y.masks)
        assert np.array_equal(x.overlap, y.overlap)
    assert not np.array_equal(a[0].image, a[1].image)


# --------------------------------------------------------------------------------------------------
# Geometry of scenes


def test_boxes_bound_the_visible_masks_and_every_object_is_visible(scenes: list) -> None:
    for s in scenes:
        assert s.num_objects >= 1
        assert s.masks.dtype == bool and s.masks.shape == (s.num_objects, SIZE, SIZE)
        assert s.masks.sum(axis=(1, 2)).min() > 0
        assert s.masks.sum(axis=0).max() <= 1  # visible parts never overlap
        expected = masks_to_boxes(torch.from_numpy(s.masks)) + torch.tensor([0.0, 0.0, 1.0, 1.0])
        assert s.boxes.dtype == np.float32
        assert torch.equal(torch.from_numpy(s.boxes), expected)


def test_overlap_is_the_fraction_hidden_by_later_objects(scenes: list) -> None:
    # Oracle: redraw every object whole and intersect it with the union of the objects drawn after it.
    hidden_some = 0
    for s in scenes[:40]:
        full = np.stack([_draw_whole(int(lab), g) for lab, g in zip(s.labels, s.geometry)])
        for i in range(s.num_objects):
            later = full[i + 1:].any(axis=0)
            expected = (full[i] & later).sum() / full[i].sum()
            assert s.overlap[i] == pytest.approx(expected, abs=1e-12)
            assert np.array_equal(s.masks[i], full[i] & ~later)
        assert s.overlap[-1] == 0.0  # nothing is drawn over the last object
        hidden_some += int((s.overlap > 0).any())
    assert hidden_some >= 10


def test_scale_overlap_and_crowding_span_their_ranges(scenes: list) -> None:
    scale = np.concatenate([s.scale for s in scenes])
    overlap = np.concatenate([s.overlap for s in scenes])
    counts = [s.num_objects for s in scenes]
    assert scale.min() >= 0.02 and scale.max() <= 0.6
    assert scale.min() < 0.03 and scale.max() > 0.5
    assert (scale < 0.1).mean() > 0.4  # log-uniform: small objects are common
    assert overlap.min() >= 0 and overlap.max() <= 0.9 + 1e-9
    assert (overlap > 0).mean() > 0.1
    assert min(counts) == 1 and max(counts) >= 15


def test_scale_is_the_diameter_over_the_image_side(scenes: list) -> None:
    # An unoccluded circle's visible box is its diameter wide (within rasterisation).
    checked = 0
    for s in scenes:
        for i in np.flatnonzero((s.labels == CLASSES.index("circle")) & (s.overlap == 0)):
            x1, y1, x2, y2 = s.boxes[i]
            assert abs((x2 - x1) - s.scale[i] * SIZE) <= 2 and abs((y2 - y1) - s.scale[i] * SIZE) <= 2
            checked += 1
    assert checked > 20


def test_objects_stand_out_from_the_background(scenes: list) -> None:
    # Mean colour inside an object against the mean of the background pixels around it.
    for s in scenes[:40]:
        background = ~s.masks.any(axis=0)
        for m, (x1, y1, x2, y2) in zip(s.masks, s.boxes.astype(int)):
            if m.sum() < 30:
                continue
            y1, x1, y2, x2 = max(0, y1 - 3), max(0, x1 - 3), min(SIZE, y2 + 3), min(SIZE, x2 + 3)
            ring = background[y1:y2, x1:x2]
            if ring.sum() < 30:
                continue
            inside = s.image[m].astype(float).mean(axis=0)
            around = s.image[y1:y2, x1:x2][ring].astype(float).mean(axis=0)
            assert np.linalg.norm(inside - around) > 40


def test_classify_has_one_large_object_and_every_class() -> None:
    cfg = SynthConfig(task="classify", image_size=SIZE, seed=1)
    scenes = [generate_scene(cfg, i) for i in range(12)]
    assert all(s.num_objects == 1 and 0.25 <= s.scale[0] <= 0.7 for s in scenes)
    assert all(s.overlap[0] == 0 and s.masks[0].sum() > 0.02 * SIZE * SIZE for s in scenes)
    assert sorted({int(s.labels[0]) for s in scenes}) == list(range(len(CLASSES)))


def test_panoptic_segments_cover_the_image_once() -> None:
    s = generate_scene(SynthConfig(task="panoptic", image_size=SIZE, seed=2), 0)
    masks, labels = panoptic_segments(s)
    assert np.array_equal(masks.sum(axis=0), np.ones((SIZE, SIZE)))  # no void, no double cover
    assert labels[: s.num_objects].tolist() == s.labels.tolist()
    assert set(labels[s.num_objects:].tolist()) <= {len(CLASSES), len(CLASSES) + 1}
    semantic = semantic_map(s, "panoptic")
    for m, label in zip(masks, labels):
        assert (semantic[m] == label).all()
    assert set(np.unique(s.stuff).tolist()) == {0, 1}  # sky and ground are both in view


def test_shape_table_and_bad_configs() -> None:
    assert list(SHAPES) == CLASSES
    for bad in (dict(task="track"), dict(min_objects=0), dict(min_objects=5, max_objects=4),
                dict(min_scale=0.0), dict(max_scale=1.5), dict(image_size=8), dict(n=-1)):
        with pytest.raises(ConfigError):
            SynthConfig(**bad).check()


# --------------------------------------------------------------------------------------------------
# In memory: the data contract


@pytest.mark.parametrize("task", TASKS)
def test_samples_follow_the_data_contract(task: str) -> None:
    ds = SynthDataset(task=task, n=3, seed=4, image_size=SIZE)
    assert len(ds) == 3 and ds.task == task
    assert ds.classes == {"segment": SEGMENT_CLASSES, "panoptic": PANOPTIC_CLASSES}.get(task, CLASSES)
    for i in range(len(ds)):
        sample, scene = ds[i], ds.scene(i)
        assert isinstance(sample["image"], tv_tensors.Image)
        assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, SIZE, SIZE)
        assert sample["image_id"] == i and sample["path"] == f"synth://{task}/4/{i}"
        assert torch.equal(sample["image"].permute(1, 2, 0), torch.from_numpy(scene.image))
        meta = ds.objects_meta(i)
        assert [m["scale"] for m in meta] == scene.scale.tolist()
        assert [m["occluded"] for m in meta] == (scene.overlap > 0).tolist()
        if task == "classify":
            assert sample["label"] == int(scene.labels[0]) and set(sample) == {"image", "label", "image_id", "path"}
            continue
        if task == "segment":
            sem = sample["semantic"]
            assert isinstance(sem, tv_tensors.Mask) and sem.dtype == torch.int64 and sem.shape == (SIZE, SIZE)
            expected = np.zeros((SIZE, SIZE), np.int64)
            for m, label in zip(scene.masks, scene.labels):
                expected[m] = label + 1
            assert np.array_equal(sem.numpy(), expected)
            continue
        boxes, labels, iscrowd = sample["boxes"], sample["labels"], sample["iscrowd"]
        N = len(labels)
        assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format == tv_tensors.BoundingBoxFormat.XYXY
        assert boxes.dtype == torch.float32 and boxes.shape == (N, 4) and tuple(boxes.canvas_size) == (SIZE, SIZE)
        assert labels.dtype == torch.int64 and iscrowd.dtype == torch.bool and iscrowd.shape == (N,)
        if task == "detect":
            assert torch.equal(labels, torch.from_numpy(scene.labels)) and "masks" not in sample
            continue
        masks = sample["masks"]
        assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8 and masks.shape == (N, SIZE, SIZE)
        assert (masks.flatten(1).sum(1) > 0).all()
        assert torch.equal(boxes.as_subclass(torch.Tensor), masks_to_boxes(masks) + torch.tensor([0., 0., 1., 1.]))
        if task == "panoptic":
            assert labels[: scene.num_objects].tolist() == scene.labels.tolist()
            assert ds.thing_classes == [True] * len(CLASSES) + [False] * len(STUFF_CLASSES)
            sem = sample["semantic"]
            assert sem.dtype == torch.int64 and sem.shape == (SIZE, SIZE)
            assert torch.equal((masks.long() * labels[:, None, None]).sum(0), sem.as_subclass(torch.Tensor))


def test_dataset_applies_the_transform_and_the_config() -> None:
    ds = SynthDataset(task="detect", n=2, image_size=SIZE, transform=lambda s: {**s, "seen": True})
    assert ds[1]["seen"] is True
    cfg = SynthConfig(task="instance", n=2, seed=3, image_size=SIZE, max_objects=2, min_scale=0.3)
    assert SynthDataset.from_config(cfg).config == cfg
    assert all(1 <= len(s["labels"]) <= 2 for s in SynthDataset.from_config(cfg))
    with pytest.raises(IndexError):
        ds.scene(2)


# --------------------------------------------------------------------------------------------------
# On disk: layouts


def test_classify_layout_is_an_image_folder(tmp_path: Path) -> None:
    out = write_synth(SynthConfig(task="classify", n=9, image_size=SIZE), tmp_path / "c", progress=False)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    expected = sorted(f"{CLASSES[i % 4]}/{i:05d}.png" for i in range(9))
    assert files == expected
    assert sorted(p.name for p in out.iterdir()) == sorted(CLASSES)


@pytest.mark.parametrize("task", ["detect", "instance"])
def test_coco_layout(tmp_path: Path, task: str) -> None:
    cfg = SynthConfig(task=task, n=4, seed=1, image_size=SIZE)
    out = write_synth(cfg, tmp_path / task, progress=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:05d}.png" for i in range(4)]
    data = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])] == CLASSES
    for image in data["images"]:
        scene = generate_scene(cfg, image["id"])
        assert image["file_name"] == f"{image['id']:05d}.png" and image["num_objects"] == scene.num_objects
        assert np.array_equal(read_image(out / "images" / image["file_name"]).permute(1, 2, 0).numpy(),
                              scene.image)
        anns = sorted((a for a in data["annotations"] if a["image_id"] == image["id"]), key=lambda a: a["id"])
        assert len(anns) == scene.num_objects
        for a, label, box, m, s, o in zip(anns, scene.labels, scene.boxes, scene.masks, scene.scale,
                                          scene.overlap):
            x1, y1, x2, y2 = box.tolist()
            assert a["category_id"] == label + 1 and a["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert a["scale"] == s and a["overlap"] == o and a["occluded"] == (o > 0)
            if task == "detect":
                assert "segmentation" not in a
            else:
                assert np.array_equal(decode_segmentation(a["segmentation"], SIZE, SIZE), m)
                assert a["area"] == m.sum()


def test_segment_layout(tmp_path: Path) -> None:
    cfg = SynthConfig(task="segment", n=3, image_size=SIZE)
    out = write_synth(cfg, tmp_path / "s", progress=False)
    assert yaml.safe_load((out / "classes.yaml").read_text()) == {"names": SEGMENT_CLASSES}
    for i in range(3):
        assert np.array_equal(read_label_png(out / "masks" / f"{i:05d}.png"),
                              semantic_map(generate_scene(cfg, i), "segment"))
        assert (out / "images" / f"{i:05d}.png").is_file()


def test_panoptic_layout_decodes_back_to_the_segments(tmp_path: Path) -> None:
    cfg = SynthConfig(task="panoptic", n=3, seed=2, image_size=SIZE)
    out = write_synth(cfg, tmp_path / "p", progress=False)
    data = json.loads((out / "panoptic.json").read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    assert [(c["id"], c["name"], c["isthing"]) for c in cats] == [
        (k + 1, name, int(name in CLASSES)) for k, name in enumerate(PANOPTIC_CLASSES)]
    assert yaml.safe_load((out / "classes.yaml").read_text()) == {"names": PANOPTIC_CLASSES}
    assert (out / "annotations.json").is_file()
    assert [im["file_name"] for im in data["images"]] == [f"{i:05d}.png" for i in range(3)]
    for ann in data["annotations"]:
        scene = generate_scene(cfg, ann["image_id"])
        masks, labels = panoptic_segments(scene)
        ids = read_panoptic_png(out / "panoptic" / ann["file_name"])
        info = ann["segments_info"]
        seg_ids = [s["id"] for s in info]
        assert len(set(seg_ids)) == len(seg_ids) and 0 not in seg_ids
        assert sorted(np.unique(ids).tolist()) == sorted(seg_ids)  # no void, nothing unlisted
        for s, m, label in zip(info, masks, labels):
            assert np.array_equal(ids == s["id"], m)
            assert s["category_id"] == label + 1 and s["area"] == m.sum() and s["iscrowd"] == 0
            ys, xs = np.nonzero(m)
            assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert np.array_equal(read_label_png(out / "masks" / ann["file_name"]),
                              semantic_map(scene, "panoptic"))


def test_write_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("x")
    cfg = SynthConfig(task="detect", n=1, image_size=SIZE)
    with pytest.raises(DataError, match="not empty"):
        write_synth(cfg, tmp_path, progress=False)
    write_synth(cfg, tmp_path, progress=False, overwrite=True)
    assert (tmp_path / "images" / "00000.png").is_file()


# --------------------------------------------------------------------------------------------------
# Round trip through the readers


def _tensor(x: torch.Tensor) -> torch.Tensor:
    return x.as_subclass(torch.Tensor)


@pytest.mark.parametrize("task", TASKS)
def test_readers_read_back_what_was_written(tmp_path: Path, task: str) -> None:
    from zir.data.dataset import ZirDataset
    from zir.data.formats import open_dataset

    n = 5
    out = write_synth(SynthConfig(task=task, n=n, seed=6, image_size=SIZE), tmp_path / task, progress=False)
    index = open_dataset(out)
    assert index.task == task and not [p for p in index.problems if p.severity == "error"]
    memory = SynthDataset(task=task, n=n, seed=6, image_size=SIZE)
    disk = ZirDataset(index)
    assert len(disk) == n
    for k in range(n):
        got = disk[k]
        i = int(Path(got["path"]).stem)
        want = memory[i]
        assert torch.equal(_tensor(got["image"]), _tensor(want["image"]))
        if task == "classify":  # ImageFolder may order classes its own way: compare names
            assert index.classes[got["label"]] == CLASSES[want["label"]]
            continue
        assert index.classes == memory.classes
        if task in ("detect", "instance"):
            assert [{key: e[key] for key in ("scale", "overlap", "occluded")} for e in index.records[k].extra] \
                == memory.objects_meta(i)
        for key in ("boxes", "labels", "masks", "semantic"):
            if key in want:
                assert torch.equal(_tensor(got[key]).to(want[key].dtype), _tensor(want[key])), key
