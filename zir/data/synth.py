"""Synthetic scenes of simple shapes for every task: deterministic, fast, in memory or on disk.

A scene is drawn from ``(seed, index)`` alone, so images can be made lazily, in any order, in data
loader workers, and the same seed always gives byte-identical files.

What a scene holds
------------------
* Shapes from :data:`CLASSES` (circle, square, triangle, star), each in a random colour chosen to stand
  out from what lies under it, rotated at random.
* **Scale** (it stands for distance to the camera): the diameter of the circle a shape is inscribed in,
  as a fraction of the image side, log-uniform in ``[min_scale, max_scale]`` so that small objects are
  common and large ones still appear.
* **Crowding**: 1 to ``max_objects`` shapes per image, drawn in order, so later shapes occlude earlier
  ones. **Overlap** of an object is the fraction of its full area hidden by later objects; a shape is
  only placed where it leaves every earlier object at least :data:`MIN_VISIBLE` of its area, so every
  annotated object is visible.
* Backgrounds: smooth coloured noise with a gradient; for ``panoptic``, "stuff" regions instead: a sky
  gradient above a tilted horizon and textured ground below (:data:`STUFF_CLASSES`).

Boxes and masks describe the *visible* part of each object (after occlusion), in zir's units
(:mod:`zir.data.contract`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw
from torchvision import tv_tensors
from tqdm import tqdm

from zir.data.contract import TASKS, Record, Sample
from zir.data.dataset import encode_mask, masks_to_boxes_np
from zir.data.formats.coco import write_coco_json
from zir.data.formats.panoptic import segments_info, write_coco_panoptic, write_panoptic_png
from zir.data.image_io import save_png
from zir.errors import ConfigError, DataError

CLASSES = ["circle", "square", "triangle", "star"]
STUFF_CLASSES = ["sky", "ground"]
SEGMENT_CLASSES = ["background", *CLASSES]  # the ``segment`` task: 0 = background, shapes 1..4
PANOPTIC_CLASSES = [*CLASSES, *STUFF_CLASSES]  # the ``panoptic`` task: things, then stuff

MIN_VISIBLE = 0.1  # an object must keep this fraction of its area visible (overlap <= 0.9)
CLASSIFY_SCALE = (0.25, 0.7)  # classification: one large shape per image
# The scenes of `zir demo` and of the detection, instance and segmentation benchmarks (SynthConfig fields):
# up to 4 shapes of 15-50 % of the side, which detectors learn within CPU minutes.
DEMO_SCENES = {"max_objects": 4, "min_scale": 0.15, "max_scale": 0.5}
_PLACEMENT_TRIES = 10  # positions tried per object before it is left out
_NOISE_SIGMA = 6.0  # fine Gaussian noise on the whole image, in grey levels


@dataclass
class SynthConfig:
    """What to generate.

    Attributes:
        task: one of ``classify``, ``detect``, ``segment``, ``instance``, ``panoptic``.
        n: number of images.
        seed: scene ``i`` depends on ``(seed, i)`` only.
        image_size: side of the square images in pixels.
        min_objects, max_objects: objects per image (ignored by ``classify``: exactly one).
        min_scale, max_scale: object diameter as a fraction of the image side (``classify`` uses
            :data:`CLASSIFY_SCALE`).
    """

    task: str = "detect"
    n: int = 100
    seed: int = 0
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 15
    min_scale: float = 0.02
    max_scale: float = 0.6

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the bad setting."""
        if self.task not in TASKS:
            raise ConfigError(f"synth: unknown task {self.task!r}; use one of {', '.join(TASKS)}")
        if self.n < 0:
            raise ConfigError(f"synth: n={self.n} must be >= 0")
        if self.image_size < 16:
            raise ConfigError(f"synth: image_size={self.image_size} is too small; use 16 or more")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError(f"synth: need 1 <= min_objects <= max_objects, got "
                              f"{self.min_objects} and {self.max_objects}")
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ConfigError(f"synth: need 0 < min_scale <= max_scale <= 1, got "
                              f"{self.min_scale} and {self.max_scale}")


@dataclass
class Scene:
    """One synthetic image and its objects (``N`` objects, ``H = W = image_size``).

    Attributes:
        image: uint8 ``(H, W, 3)`` RGB.
        labels: int64 ``(N,)`` ids into :data:`CLASSES`.
        boxes: float32 ``(N, 4)`` XYXY absolute pixels (exclusive x2, y2) of the visible part.
        masks: bool ``(N, H, W)`` visible part of each object.
        scale: float64 ``(N,)`` object diameter / image side.
        overlap: float64 ``(N,)`` fraction of the object's full area hidden by later objects, in [0, 0.9].
        geometry: float64 ``(N, 4)`` per object ``(cx, cy, r, angle)``: centre and radius in pixels of
            the circle the shape is inscribed in, rotation in radians (``SHAPES`` redraws it whole).
        stuff: int64 ``(H, W)`` ids into :data:`STUFF_CLASSES` (0 sky, 1 ground), panoptic only, else None.
    """

    image: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    scale: np.ndarray
    overlap: np.ndarray
    geometry: np.ndarray
    stuff: np.ndarray | None = None

    @property
    def num_objects(self) -> int:
        """Crowding: the number of objects in the image."""
        return len(self.labels)

    def objects_meta(self) -> list[dict[str, Any]]:
        """Per object ``{"scale", "overlap", "occluded"}``, the fields analysis slices results by."""
        return [{"scale": float(s), "overlap": float(o), "occluded": bool(o > 0)}
                for s, o in zip(self.scale, self.overlap)]


# --------------------------------------------------------------------------------------------------
# Shapes: each draws a filled shape inscribed in the circle (cx, cy, r), rotated by `angle` radians


def _regular_points(cx: float, cy: float, radii: list[float], angle: float) -> list[tuple[float, float]]:
    """Vertices spaced evenly around (cx, cy), vertex ``k`` at distance ``radii[k]``."""
    n = len(radii)
    return [(cx + r * math.cos(angle + 2 * math.pi * k / n), cy + r * math.sin(angle + 2 * math.pi * k / n))
            for k, r in enumerate(radii)]


def _circle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)


def _square(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    draw.polygon(_regular_points(cx, cy, [r] * 4, angle), fill=1)


def _triangle(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    draw.polygon(_regular_points(cx, cy, [r] * 3, angle), fill=1)


def _star(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, angle: float) -> None:
    draw.polygon(_regular_points(cx, cy, [r, 0.45 * r] * 5, angle), fill=1)


SHAPES: dict[str, Callable[[ImageDraw.ImageDraw, float, float, float, float], None]] = {
    "circle": _circle, "square": _square, "triangle": _triangle, "star": _star,
}
assert list(SHAPES) == CLASSES


def _rasterize(label: int, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    """bool ``(size, size)`` mask of one shape."""
    img = Image.new("L", (size, size), 0)
    SHAPES[CLASSES[label]](ImageDraw.Draw(img), cx, cy, r, angle)
    return np.asarray(img, dtype=bool)


# --------------------------------------------------------------------------------------------------
# Backgrounds: float32 (H, W, 3) in grey levels, unclipped


def _upsample(grid: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a ``(h, w, C)`` grid (h, w >= 2) to ``(size, size, C)`` float32."""
    h, w = grid.shape[:2]
    grid = grid.astype(np.float32)
    ys, xs = np.linspace(0, h - 1, size), np.linspace(0, w - 1, size)
    y0, x0 = np.minimum(ys.astype(int), h - 2), np.minimum(xs.astype(int), w - 2)
    wy = (ys - y0).astype(np.float32)[:, None, None]
    wx = (xs - x0).astype(np.float32)[None, :, None]
    rows = grid[y0] * (1 - wy) + grid[y0 + 1] * wy  # (size, w, C): separable, rows first
    return rows[:, x0] * (1 - wx) + rows[:, x0 + 1] * wx


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 3) -> np.ndarray:
    """Smooth noise in [-1, 1] with features about ``size / cells`` pixels wide, ``(size, size, C)``."""
    return _upsample(rng.uniform(-1, 1, (cells + 1, cells + 1, channels)), size)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background: a colour gradient plus coarse and fine smooth noise."""
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    direction = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    t = ramp[None, :] * math.cos(direction) + ramp[:, None] * math.sin(direction)  # (H, W)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    gradient = c0 + (c1 - c0) * t[..., None]
    coarse = _smooth_noise(rng, size, int(rng.integers(2, 6)))
    fine = _smooth_noise(rng, size, max(2, size // int(rng.integers(3, 8))))
    return gradient + np.float32(rng.uniform(10, 50)) * coarse + np.float32(rng.uniform(5, 30)) * fine


def _sky_and_ground(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sky gradient above a tilted horizon, textured ground below; returns (image, stuff ids (H, W))."""
    x = np.arange(size, dtype=np.float32)
    horizon = rng.uniform(0.25, 0.65) * size + rng.uniform(-0.15, 0.15) * (x - size / 2)  # (W,) row
    y = x[:, None]  # (H, 1)
    stuff = (y >= horizon).astype(np.int64)  # (H, W): 0 = sky, 1 = ground
    # Sky: a deep colour at the top fading to a pale one at the horizon, with faint clouds.
    zenith = rng.uniform([20, 60, 140], [120, 160, 255]).astype(np.float32)
    pale = np.minimum(zenith + np.float32(rng.uniform(60, 120)), 255)
    t = np.clip(y / np.maximum(horizon, 1), 0, 1).astype(np.float32)[..., None]
    sky = zenith + (pale - zenith) * t + 15 * _smooth_noise(rng, size, 3, 1)
    # Ground: an earthy colour with coarse patches and fine grain.
    earth = rng.uniform([50, 50, 20], [160, 150, 90]).astype(np.float32)
    ground = (earth + 30 * _smooth_noise(rng, size, 4) +
              25 * _smooth_noise(rng, size, max(2, size // 4), 1))
    return np.where(stuff[..., None] == 0, sky, ground).astype(np.float32), stuff


# --------------------------------------------------------------------------------------------------
# Scenes


def _pick_colour(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Of 8 random colours, the one farthest from the mean of what the shape covers (contrast)."""
    candidates = rng.uniform(0, 255, (8, 3))
    under = canvas[mask].mean(axis=0)
    return candidates[np.argmax(((candidates - under) ** 2).sum(axis=1))]


def generate_scene(cfg: SynthConfig, index: int) -> Scene:
    """Draw scene ``index`` of ``cfg``.

    The scene depends on ``index`` and the settings of ``cfg`` other than ``n``, nothing else: any
    process draws it the same, in any order. ``detect``, ``instance`` and ``segment`` draw the same
    scenes for the same seed; ``panoptic`` adds sky and ground, ``classify`` draws one large shape.
    """
    cfg.check()
    rng = np.random.default_rng([cfg.seed, index])
    S = cfg.image_size
    if cfg.task == "panoptic":
        canvas, stuff = _sky_and_ground(rng, S)
    else:
        canvas, stuff = _texture(rng, S), None

    if cfg.task == "classify":
        # One large shape; classes cycle with the index so that any n >= 4 has every class, balanced.
        plan = [(index % len(CLASSES), rng.uniform(*CLASSIFY_SCALE))]
    else:
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        labels = rng.integers(0, len(CLASSES), n)
        scales = np.exp(rng.uniform(math.log(cfg.min_scale), math.log(cfg.max_scale), n))
        plan = list(zip(labels.tolist(), scales.tolist()))

    owner = np.full((S, S), -1, np.int64)  # index of the object on top of each pixel, -1 = none
    placed: list[tuple[int, float, tuple[float, ...]]] = []  # (label, scale, geometry) of drawn objects
    full_area = np.zeros(0, np.int64)  # (k,) pixels of each drawn object before occlusion
    visible = np.zeros(0, np.int64)  # (k,) pixels of each drawn object still on top
    for label, scale in plan:
        r = scale * S / 2
        angle = rng.uniform(0, 2 * math.pi)
        for _ in range(_PLACEMENT_TRIES):
            cx, cy = rng.uniform(r, S - r, 2)  # whole shape inside the image: no truncation
            mask = _rasterize(label, cx, cy, r, angle, S)
            covered = owner[mask]
            lost = np.bincount(covered[covered >= 0], minlength=len(placed))
            if mask.any() and np.all(visible - lost >= np.maximum(1, MIN_VISIBLE * full_area)):
                break
        else:
            continue  # no room for it: leave it out rather than hide an earlier object
        canvas[mask] = _pick_colour(rng, canvas, mask)
        owner[mask] = len(placed)
        area = int(mask.sum())
        visible = np.append(visible - lost, area)
        full_area = np.append(full_area, area)
        placed.append((label, scale, (cx, cy, r, angle)))

    canvas += _NOISE_SIGMA * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    masks = owner[None] == np.arange(len(placed))[:, None, None]  # (N, H, W)
    return Scene(
        image=image,
        labels=np.asarray([p[0] for p in placed], np.int64).reshape(-1),
        boxes=masks_to_boxes_np(masks),
        masks=masks,
        scale=np.asarray([p[1] for p in placed], np.float64).reshape(-1),
        overlap=1.0 - visible / np.maximum(full_area, 1),
        geometry=np.asarray([p[2] for p in placed], np.float64).reshape(-1, 4),
        stuff=stuff,
    )


def semantic_map(scene: Scene, task: str) -> np.ndarray:
    """int64 ``(H, W)`` class ids: ``segment`` over :data:`SEGMENT_CLASSES` (0 = background),
    ``panoptic`` over :data:`PANOPTIC_CLASSES` (things drawn over sky and ground)."""
    H, W = scene.image.shape[:2]
    if task == "panoptic":
        if scene.stuff is None:
            raise ValueError("semantic_map: a panoptic map needs a scene drawn with task='panoptic'")
        out = scene.stuff + len(CLASSES)
    else:
        out = np.zeros((H, W), np.int64)
    offset = 1 if task == "segment" else 0
    for m, label in zip(scene.masks, scene.labels):
        out[m] = label + offset
    return out


def panoptic_segments(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Every non-empty segment, things (in scene order) then stuff (sky, ground).

    Returns:
        masks bool ``(M, H, W)`` and labels int64 ``(M,)`` ids into :data:`PANOPTIC_CLASSES`.
    """
    if scene.stuff is None:
        raise ValueError("panoptic_segments: the scene has no stuff map; draw it with task='panoptic'")
    things = scene.masks.any(axis=0)
    stuff_masks = [(scene.stuff == k) & ~things for k in range(len(STUFF_CLASSES))]
    stuff_ids = [k for k, m in enumerate(stuff_masks) if m.any()]  # objects may cover a whole region
    masks = np.concatenate([scene.masks, np.asarray([stuff_masks[k] for k in stuff_ids], bool)
                            .reshape(-1, *things.shape)])
    labels = np.concatenate([scene.labels, np.asarray(stuff_ids, np.int64) + len(CLASSES)])
    return masks, labels.astype(np.int64)


def task_classes(task: str) -> list[str]:
    """Class names of a synthetic dataset of ``task``."""
    return {"segment": SEGMENT_CLASSES, "panoptic": PANOPTIC_CLASSES}.get(task, CLASSES)


# --------------------------------------------------------------------------------------------------
# In memory


class SynthDataset(torch.utils.data.Dataset):
    """Synthetic samples following :class:`~zir.data.contract.Sample`, made on the fly (no files).

    Args:
        task, n, seed, image_size: see :class:`SynthConfig`.
        transform: called on each sample dict (torchvision transforms v2).
        **options: the other :class:`SynthConfig` fields (``max_objects``, ``min_scale``, ...).

    Attributes:
        classes: class names (``segment`` adds ``background`` as 0, ``panoptic`` adds sky and ground).
        thing_classes: ``panoptic`` only: True for things, False for stuff; else None.
    """

    def __init__(self, task: str = "detect", n: int = 100, seed: int = 0, image_size: int = 128,
                 transform: Callable[[Sample], Sample] | None = None, **options: Any) -> None:
        self.config = SynthConfig(task=task, n=n, seed=seed, image_size=image_size, **options)
        self.config.check()
        self.task = task
        self.classes = task_classes(task)
        self.thing_classes = [True] * len(CLASSES) + [False] * len(STUFF_CLASSES) if task == "panoptic" else None
        self.transform = transform

    @classmethod
    def from_config(cls, cfg: SynthConfig, transform: Callable[[Sample], Sample] | None = None) -> SynthDataset:
        fields = {k: v for k, v in vars(cfg).items() if k not in ("task", "n", "seed", "image_size")}
        return cls(cfg.task, cfg.n, cfg.seed, cfg.image_size, transform, **fields)

    def __len__(self) -> int:
        return self.config.n

    def scene(self, i: int) -> Scene:
        if not 0 <= i < len(self):
            raise IndexError(f"SynthDataset index {i} out of range [0, {len(self)})")
        return generate_scene(self.config, i)

    def objects_meta(self, i: int) -> list[dict[str, Any]]:
        """Per object of image ``i``: ``{"scale", "overlap", "occluded"}`` (same order as the labels)."""
        return self.scene(i).objects_meta()

    def __getitem__(self, i: int) -> Sample:
        sample = scene_to_sample(self.scene(i), self.task, i, f"synth://{self.task}/{self.config.seed}/{i}")
        if self.transform is not None:
            sample = self.transform(sample)
        return sample


def scene_to_sample(scene: Scene, task: str, image_id: int, path: str) -> Sample:
    """The :class:`~zir.data.contract.Sample` of a scene for ``task``."""
    H, W = scene.image.shape[:2]
    image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(scene.image.transpose(2, 0, 1))))
    sample: Sample = {"image": image, "image_id": image_id, "path": path}
    if task == "classify":
        sample["label"] = int(scene.labels[0])
        return sample
    if task == "segment":
        sample["semantic"] = tv_tensors.Mask(torch.from_numpy(semantic_map(scene, task)))
        return sample
    if task == "panoptic":
        masks, labels = panoptic_segments(scene)
        boxes = masks_to_boxes_np(masks)
        sample["semantic"] = tv_tensors.Mask(torch.from_numpy(semantic_map(scene, task)))
    else:
        masks, labels, boxes = scene.masks, scene.labels, scene.boxes
    sample["boxes"] = tv_tensors.BoundingBoxes(torch.from_numpy(boxes.copy()), format="XYXY", canvas_size=(H, W))
    sample["labels"] = torch.from_numpy(labels.copy())
    sample["iscrowd"] = torch.zeros(len(labels), dtype=torch.bool)
    if task in ("instance", "panoptic"):
        sample["masks"] = tv_tensors.Mask(torch.from_numpy(masks.astype(np.uint8)))
    return sample


# --------------------------------------------------------------------------------------------------
# On disk


def write_synth(cfg: SynthConfig, out_dir: Path, progress: bool = True, overwrite: bool = False) -> Path:
    """Write ``cfg.n`` scenes of ``cfg.task`` under ``out_dir``, byte-identical for the same ``cfg``.

    Layout (``<stem>`` is ``<index:05d>``):
        * ``classify``: ``<class>/<stem>.png`` (ImageFolder).
        * ``detect``, ``instance``: ``images/<stem>.png`` and ``annotations.json`` (COCO instances; per
          object ``scale``, ``overlap``, ``occluded``; per image ``num_objects``; ``instance`` adds the
          RLE ``segmentation`` of the visible mask).
        * ``segment``: ``images/``, ``masks/<stem>.png`` (class ids, 0 = background), ``classes.yaml``.
        * ``panoptic``: ``images/``, ``panoptic/<stem>.png`` and ``panoptic.json`` (COCO panoptic),
          ``annotations.json`` of the things (as ``instance``), ``masks/`` over things and stuff and
          ``classes.yaml``.

    Args:
        overwrite: write into a non-empty folder (files are written over, nothing is deleted).

    Returns:
        ``out_dir``.
    """
    from zir.data.output import check_writable

    cfg.check()
    out_dir = check_writable(out_dir, "folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(out_dir, "output path is a file; choose a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise DataError(out_dir, "output folder is not empty; choose an empty folder or pass overwrite=True")
    task = cfg.task
    folders = {"classify": [], "detect": ["images"], "instance": ["images"],
               "segment": ["images", "masks"], "panoptic": ["images", "masks", "panoptic"]}[task]
    out_dir.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        (out_dir / folder).mkdir(parents=True, exist_ok=True)

    records: list[Record] = []
    panoptic_annotations: list[dict[str, Any]] = []
    for i in tqdm(range(cfg.n), desc=f"synth {task}", unit="img", disable=not progress):
        scene = generate_scene(cfg, i)
        stem = f"{i:05d}"
        if task == "classify":  # class folders appear with their first image: no empty class folders
            (out_dir / CLASSES[int(scene.labels[0])]).mkdir(parents=True, exist_ok=True)
            save_png(scene.image, out_dir / CLASSES[int(scene.labels[0])] / f"{stem}.png")
            continue
        image_path = out_dir / "images" / f"{stem}.png"
        save_png(scene.image, image_path)
        if task in ("segment", "panoptic"):
            save_png(semantic_map(scene, task).astype(np.uint8), out_dir / "masks" / f"{stem}.png")
        if task == "panoptic":
            panoptic_annotations.append(_write_panoptic_png(scene, i, out_dir / "panoptic" / f"{stem}.png"))
        if task != "segment":
            records.append(Record(
                path=image_path, image_id=i, width=cfg.image_size, height=cfg.image_size,
                boxes=scene.boxes, labels=scene.labels, iscrowd=np.zeros(scene.num_objects, bool),
                segmentations=[encode_mask(m) for m in scene.masks] if task != "detect" else [],
                extra=scene.objects_meta()))

    if task in ("segment", "panoptic"):
        names = task_classes(task)
        (out_dir / "classes.yaml").write_text(yaml.safe_dump({"names": names}, default_flow_style=None))
    if task in ("detect", "instance", "panoptic"):
        _write_instances(records, out_dir / "annotations.json", out_dir / "images")
    if task == "panoptic":
        write_coco_panoptic(out_dir / "panoptic.json",
                            [{"id": r.image_id, "file_name": r.path.name, "width": r.width, "height": r.height}
                             for r in records], panoptic_annotations,
                            PANOPTIC_CLASSES, [k < len(CLASSES) for k in range(len(PANOPTIC_CLASSES))])
    return out_dir


def _write_panoptic_png(scene: Scene, image_id: int, path: Path) -> dict[str, Any]:
    """Write the COCO panoptic PNG (0 = void) and return its annotation.

    Segment ids are ``1..M`` in :func:`panoptic_segments` order (things, then sky and ground).
    """
    masks, labels = panoptic_segments(scene)
    ids = np.zeros(scene.image.shape[:2], np.int64)
    for k, m in enumerate(masks):
        ids[m] = k + 1
    write_panoptic_png(ids, path)
    segments = [{"id": k + 1, "category_id": int(label)} for k, label in enumerate(labels)]
    return {"image_id": image_id, "file_name": path.name, "segments_info": segments_info(ids, segments)}


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True, allow_nan=False)


def _write_instances(records: list[Record], out_json: Path, image_root: Path) -> None:
    """COCO instances JSON of the things, plus the per-image ``num_objects`` (crowding)."""
    write_coco_json(records, CLASSES, out_json, image_root)
    # write_coco_json keeps per-object extras only; the per-image field is added here.
    with open(out_json, encoding="utf-8") as f:
        data = json.load(f)
    counts = {r.image_id: r.num_objects for r in records}
    for image in data["images"]:
        image["num_objects"] = counts[image["id"]]
    _write_json(out_json, data)
