"""Every preset runs for every task, keeps the data contract, and the preview grid is written."""

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from zir.augment import PRESETS, build_augment, preview, preview_grid
from zir.data.contract import IGNORE_INDEX, TASKS
from zir.errors import ConfigError


def make_sample(task, H=72, W=96):
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=g)
    s = {"image": tv_tensors.Image(image), "image_id": 1, "path": "x.jpg"}
    if task == "classify":
        s["label"] = 2
        return s
    rects = [(5, 5, 40, 30), (50, 20, 90, 70), (0, 60, 20, 72)]
    masks = torch.zeros(3, H, W, dtype=torch.uint8)
    semantic = torch.zeros(H, W, dtype=torch.int64)
    for i, (x1, y1, x2, y2) in enumerate(rects):
        masks[i, y1:y2, x1:x2] = 1
        semantic[y1:y2, x1:x2] = i + 1
    semantic[0, 0] = IGNORE_INDEX
    s["boxes"] = tv_tensors.BoundingBoxes(torch.tensor(rects, dtype=torch.float32), format="XYXY", canvas_size=(H, W))
    s["labels"] = torch.tensor([0, 1, 2])
    s["iscrowd"] = torch.tensor([False, False, True])
    s["masks"] = tv_tensors.Mask(masks)
    s["semantic"] = tv_tensors.Mask(semantic)
    return s


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("image_size", [None, 64])
def test_every_preset_runs_for_every_task(preset, task, image_size):
    pipe = build_augment(preset, task, image_size)
    assert isinstance(pipe, v2.Compose)
    for seed in range(4):
        torch.manual_seed(seed)
        s = make_sample(task)
        out = pipe(s)
        image = out["image"]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape[0] == 3
        H, W = image.shape[-2:]
        if image_size:
            assert (H, W) == (image_size, image_size)
        else:
            assert (H, W) == (72, 96)
        assert out["image_id"] == 1 and out["path"] == "x.jpg"
        if task == "classify":
            assert out["label"] == 2
            continue
        n = len(out["boxes"])
        assert out["boxes"].canvas_size == (H, W)
        assert len(out["labels"]) == len(out["iscrowd"]) == len(out["masks"]) == n
        assert out["masks"].shape[-2:] == (H, W) and out["semantic"].shape == (H, W)
        assert set(out["masks"].unique().tolist()) <= {0, 1}
        assert set(out["semantic"].unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}
        if n:
            b = out["boxes"]
            assert (b[:, 0] >= 0).all() and (b[:, 2] <= W).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= H).all()


def test_none_without_size_is_identity():
    s = make_sample("instance")
    out = build_augment("none", "instance")(s)
    for k in ("image", "boxes", "masks", "semantic", "labels"):
        assert torch.equal(out[k], s[k])


def test_letterbox_pads_semantic_with_ignore():
    s = make_sample("segment")  # 72x96 -> 128x128: scale 4/3, 16 rows of padding above and below
    out = build_augment("none", "segment", 128)(s)
    assert (out["semantic"][:16] == IGNORE_INDEX).all() and (out["semantic"][-16:] == IGNORE_INDEX).all()
    assert (out["semantic"][16:-16] != IGNORE_INDEX).float().mean() > 0.99


def test_segment_standard_leaves_out_occlusion():
    names = {type(t).__name__ for t in build_augment("heavy", "segment").transforms}
    assert "ElasticDeform" in names and not {"Cutout", "GridMask"} & names
    assert {"Cutout", "GridMask"} <= {type(t).__name__ for t in build_augment("heavy", "detect").transforms}


def test_orientation_any_adds_quarter_turns_after_the_flip():
    for task in ("classify", "detect", "segment"):
        names = [type(t).__name__ for t in build_augment("light", task, 64, orientation="any").transforms]
        assert names[names.index("RandomHorizontalFlip") + 1] == "RandomQuarterTurn"
        assert "RandomQuarterTurn" not in [type(t).__name__ for t in build_augment("light", task, 64).transforms]


@pytest.mark.parametrize("bad", [dict(preset="extreme"), dict(task="depth"), dict(image_size=2),
                                 dict(orientation="sideways")])
def test_bad_settings_raise_config_error(bad):
    with pytest.raises(ConfigError):
        build_augment(**bad)


def test_preview_grid_writes_png(tmp_path):
    s = make_sample("instance")
    out = preview_grid(s, tmp_path / "grid.png", seed=0)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 600 and img.height > 300


def test_preview_from_image_file_with_boxes(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(torch.randint(0, 256, (60, 80, 3), dtype=torch.uint8).numpy()).save(path)
    out = preview(path, tmp_path / "out" / "grid.png", boxes=[[10, 10, 40, 30]])
    assert out.is_file()


def _outline(row: torch.Tensor, lo: int, hi: int) -> tuple[float, float]:
    """Sub-pixel extent of the bright bar in a 1-D profile in [0, 1] (dark around it), looked for in
    ``[lo, hi)``: where the profile crosses one half, linearly interpolated between pixel centres
    (``i + 0.5``); a resampled edge is a symmetric ramp, so its half-way point stays where the edge was."""
    lit = (row[lo:hi] >= 0.5).nonzero().flatten() + lo
    first, last = int(lit.min()), int(lit.max())
    left = first - 0.5 + (0.5 - float(row[first - 1])) / float(row[first] - row[first - 1])
    right = last + 0.5 + (float(row[last]) - 0.5) / float(row[last] - row[last + 1])
    return left, right


@pytest.mark.parametrize("steps", ["none", "light", "standard geometry"])
def test_boxes_outline_the_pixels_they_came_from(steps):
    """A white rectangle on black sent through the detection pipeline: its box, as transformed, matches the
    rectangle's pixels in the output image to a fraction of a pixel per side (the letterbox's resize, flip,
    zoom and shift move boxes and pixels alike; a half-pixel or flip-width slip would show as a bias)."""
    from zir.augment.geometric import Letterbox, RandomHorizontalFlip, RandomScaleTranslate

    S, (H, W), rect = 320, (417, 650), (180, 117, 452, 308)
    tf = (v2.Compose([Letterbox(S), RandomHorizontalFlip(0.5), RandomScaleTranslate(0.5, 0.1, p=1.0)])
          if steps == "standard geometry" else build_augment(steps, "detect", S))
    torch.manual_seed(0)
    errors = []
    for _ in range(60):
        image = torch.zeros(3, H, W, dtype=torch.uint8)
        image[:, rect[1]: rect[3], rect[0]: rect[2]] = 255
        boxes = tv_tensors.BoundingBoxes(torch.tensor([rect], dtype=torch.float32), format="XYXY", canvas_size=(H, W))
        out, target = tf(tv_tensors.Image(image), {"boxes": boxes, "labels": torch.tensor([1])})
        if len(target["boxes"]) != 1:
            continue
        x1, y1, x2, y2 = target["boxes"][0].tolist()
        if min(x1, y1) < 3 or max(x2, y2) > S - 3:  # cut by the canvas: the pixels end at the border
            continue
        grey = out[0].float() / 255
        grey = grey / grey[int((y1 + y2) / 2), int((x1 + x2) / 2)]  # HSV may dim the white
        left, right = _outline(grey[int((y1 + y2) / 2)], int(x1) - 3, int(x2) + 4)
        top, bottom = _outline(grey[:, int((x1 + x2) / 2)], int(y1) - 3, int(y2) + 4)
        errors.append([x1 - left, y1 - top, x2 - right, y2 - bottom])
    errors = torch.tensor(errors)
    assert len(errors) >= 20
    assert errors.mean(0).abs().max() < 0.35, errors.mean(0)  # no bias on any side
    assert errors.abs().max() < 1.5, errors.abs().max(0).values  # resampling blurs an edge by at most a pixel
