"""Benchmark: semantic segmentation (issue 5) on ISBI 2012 membranes and on synthetic shapes, and speed.

* ISBI 2012 (``--isbi``, the 30 training slices of the challenge, 512 x 512): train on slices 0-24,
  validate on 25-29, each model for the same CPU budget (``--minutes`` of ``--threads`` cores) with the
  same data pipeline, loss (cross-entropy + soft Dice), optimiser and augmentation (``--augment light``:
  flips, mild scale/shift, colour; ``standard`` adds scale 0.5-1.5 and elastic deformation, which
  measured worse on these fixed-scale slices). Metrics at the slices' native 512 x 512 pixels: the
  challenge's pixel error, ``1 - max_t F(t)`` of the cell pixels over thresholds 0.0, 0.1, ..., 1.0 of
  the cell probability (:class:`zir.metrics.ThresholdSweep`; the definition behind the U-Net paper's
  0.0611), the plain fraction of wrong pixels (``1 - pixel accuracy`` of the arg-max map) and the IoU of
  each class (membrane, cell).
  Peers: ``segmentation_models_pytorch.Unet("resnet18", encoder_weights=None)``, trained through the
  same zir loop (wrapped as a zir model in this script only).
* Synthetic shapes (``--synth-scenes``: the detection benchmark's scenes or synth's defaults): ``unet``
  mean IoU on held-out scenes.
* Inference ms per 512 x 512 image (batch 1, after warm-up) for each model, beside smp's Unet and
  torchvision's ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)``.

    .venv/bin/pip install segmentation-models-pytorch
    .venv/bin/python benchmarks/segment.py [--minutes 15] [--threads 1] [--parts isbi,synth,speed]
    .venv/bin/python benchmarks/segment.py --parts labels   # only the ISBI label offset table
    .venv/bin/python benchmarks/segment.py --parts rescore --rescore RUN_DIR,...  # saved runs, 1/2/8 views
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import zir
from zir.data.contract import SemanticPrediction
from zir.data.image_io import read_image, read_label_png
from zir.data.synth import DEMO_SCENES
from zir.metrics.semantic import SemanticMetrics
from zir.models import MODELS, ModelSpec, build_model
from zir.models.base import ZirModel
from zir.models.detect.transform import resize, scores_to_input, working_size
from zir.models.segment.losses import cross_entropy, semantic_targets, soft_dice

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012_membrane" / "train"

# --------------------------------------------------------------------------------------------------
# The peer: segmentation_models_pytorch's U-Net as a zir model (benchmark only, not in zir's registry)


@dataclass
class SmpUnetConfig:
    """smp.Unet(encoder, encoder_weights=None); the loss of zir's unet on many classes (CE + soft Dice)."""

    num_classes: int = 2
    image_size: int = 256
    encoder: str = "resnet18"


class SmpUnet(ZirModel):
    task = "segment"

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        self.cfg = cfg
        self.net = smp.Unet(cfg.encoder, encoder_weights=None, classes=cfg.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        H, W = images.shape[-2:]
        x = F.pad(self.normalize(images), (0, -W % 32, 0, -H % 32))
        return self.net(x)[:, :, :H, :W]

    def loss(self, images: torch.Tensor, targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        logits = self(images)
        target = semantic_targets(targets, tuple(images.shape[-2:]), images.device)
        return {"ce": cross_entropy(logits, target), "dice": soft_dice(logits.float().softmax(1), target)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor | list[torch.Tensor]) -> list[SemanticPrediction]:
        out = []
        for image in images:
            h, w = image.shape[-2:]
            probs = self(resize(image.unsqueeze(0), working_size((h, w), self.cfg.image_size))).float().softmax(1)
            probs = scores_to_input(probs, (h, w))[0]
            out.append(SemanticPrediction(semantic=probs.argmax(0), scores=probs))
        return out


def register_smp() -> None:
    MODELS["smp_unet"] = ModelSpec("segment", SmpUnetConfig, SmpUnet, "smp.Unet (benchmark peer)")


# --------------------------------------------------------------------------------------------------
# ISBI 2012


def isbi_split(root: Path, tmp: Path) -> tuple[Path, Path]:
    """Symlink folders ``train/`` (slices 0-24) and ``val/`` (25-29), each with ``image/`` and ``label/``."""
    parts = {"train": range(0, 25), "val": range(25, 30)}
    for name, ids in parts.items():
        for sub in ("image", "label"):
            (tmp / name / sub).mkdir(parents=True)
            for i in ids:
                (tmp / name / sub / f"{i}.png").symlink_to(root / sub / f"{i}.png")
    return tmp / "train", tmp / "val"


def step_seconds(model: ZirModel, batch: int, size: int, amp: str, repeats: int = 5) -> float:
    """CPU seconds of one training step (forward, loss, backward) on random data: the median of
    ``repeats`` after a warm-up step. CPU time of this process, not wall time, so that other jobs on a
    shared machine do not shorten the schedule."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, size, size)
    targets = [{"semantic": (torch.rand(size, size) > 0.3).long(), "size": (size, size)} for _ in range(batch)]
    times = []
    for _ in range(repeats + 1):
        t = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            loss = sum(model.loss(images, targets).values())
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.process_time() - t)
    return sorted(times[1:])[len(times) // 2 - 1]


def native_metrics(run_dir: Path, val_dir: Path, tta: int = 1) -> dict[str, float]:
    """The challenge's pixel error (best F-score of cell pixels over thresholds), the fraction of wrong
    pixels and per-class IoU of a run's best weights on the validation slices at 512 x 512, averaging
    ``tta`` flipped / turned views (zir's models only: ``model_args.tta``)."""
    predictor = zir.load(run_dir)
    if tta > 1:
        predictor.model.cfg.tta = tta
    metric = SemanticMetrics(2, classes=["membrane", "cell"])  # two classes: ISBI's pixel error too
    for image_path in sorted((val_dir / "image").glob("*.png")):
        label = torch.from_numpy(read_label_png(val_dir / "label" / image_path.name).astype("int64"))
        target = (label > 127).long()  # 0 = membrane, 255 = cell interior (the challenge's positive class)
        pred = predictor.predict(read_image(image_path).float() / 255)[0]
        metric.update([pred], [target])
    m = metric.compute()
    return {"isbi_pixel_error": m["isbi_pixel_error"], "isbi_threshold": m["isbi_threshold"],
            "pixel_error": 1 - m["pixel_accuracy"], "iou_membrane": m["iou/membrane"], "iou_cell": m["iou/cell"],
            "miou": m["miou"]}


def label_offset(root: Path) -> list[list[float]]:
    """Correlation of image brightness with the cell label (1 inside cells, 0 on membranes) over all 30
    slices, with the label moved by ``dy, dx`` in -1, 0, 1 pixels (rows: dy; a 4-pixel border left out).
    A peak away from the centre means the labels sit off the image's membranes by a fraction of a pixel,
    which flips and turns cannot keep."""
    images = torch.stack([read_image(p).float().mean(0) for p in sorted((root / "image").glob("*.png"))])
    labels = torch.stack([torch.from_numpy((read_label_png(root / "label" / p.name) > 127).astype("float32"))
                          for p in sorted((root / "image").glob("*.png"))])
    x = images[:, 4:-4, 4:-4].flatten()
    x = (x - x.mean()) / x.std()
    out = []
    for dy in (-1, 0, 1):
        row = []
        for dx in (-1, 0, 1):
            y = torch.roll(labels, (dy, dx), dims=(1, 2))[:, 4:-4, 4:-4].flatten()
            row.append(float((x * (y - y.mean()) / y.std()).mean()))
        out.append(row)
    return out


def rescore(runs: list[str], tmp: Path) -> dict[str, dict[int, dict[str, float]]]:
    """:func:`native_metrics` of saved ISBI runs with 1, 2 and 8 test-time views (the runs' own
    checkpoints; only zir's models take views)."""
    _, val_dir = isbi_split(ISBI, tmp)
    return {run: {v: native_metrics(Path(run), val_dir, tta=v) for v in (1, 2, 8)} for run in runs}


def tta_views(orientation: str) -> int:
    """Test-time views matching the training's flips: 2 (mirror image) for upright, 8 for any."""
    return 8 if orientation == "any" else 2


# Per-model ISBI settings: (registry name, model_args, training settings). Every model trains at the
# slices' native 512 px on random crops (data.crop), so thin membranes keep their width in pixels, and
# predicts the whole 512 x 512 slice (all three are fully convolutional).
ISBI_MODELS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "unet": ("unet", {"width": 16, "depth": 4, "loss": "ce+dice"}, {"lr": 3e-3}),
    "unet_effnet": ("unet", {"encoder": "efficientnet_lite0", "width": 16, "depth": 5}, {"lr": 1e-3}),
    "fcn": ("fcn", {"variant": "8s"}, {"lr": 1e-3}),
    "smp_unet": ("smp_unet", {}, {"lr": 3e-3}),
}


def train_isbi(name: str, key: str, train_dir: Path, val_dir: Path, project: Path,
               args: argparse.Namespace) -> dict[str, Any]:
    model, model_args, settings = ISBI_MODELS[key]
    if model == "unet":
        model_args = {**model_args, **({"width": args.width} if args.width else {}),
                      **({"loss": args.loss} if args.loss else {})}
    batch, crop = args.batch_size, args.crop
    probe = build_model(model, 2, args.image_size, model_args)
    # The budget is zir's time= (zir.engine.budget): the epoch count is fitted from timed steps so that
    # the cosine schedule ends with the budget (wall clock), evaluation included.
    print(f"[{name}] time={args.minutes} min", flush=True)
    t0, cpu0 = time.time(), time.process_time()
    result = zir.train(model=model, model_args=model_args, data=str(train_dir), val_path=str(val_dir),
                       image_size=args.image_size, crop=crop, batch_size=batch, augment=args.augment,
                       orientation=args.orientation,
                       warmup_epochs=2.0, amp=args.amp, time=args.minutes, threads=args.threads, project=str(project),
                       name=name, progress=False, **settings)
    cpu_s = time.process_time() - cpu0
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    out = native_metrics(result.run_dir, val_dir)
    if hasattr(probe.cfg, "tta"):  # the U-Net paper's ISBI result averages rotated views
        # the views the training saw: left-right mirror images (upright) or all eight flips and turns
        tta = native_metrics(result.run_dir, val_dir, tta=tta_views(args.orientation))
        out["tta_isbi_pixel_error"], out["tta_pixel_error"] = tta["isbi_pixel_error"], tta["pixel_error"]
    # the best checkpoint is picked on these same slices (optimistic); the last epoch's is not
    out["last_pixel_error"] = 1 - rows[-1].get("val/pixel_accuracy", math.nan)
    out.update(epochs=result.epochs_done, planned_epochs=result.epochs_done, train_s=rows[-1]["time_s"], cpu_s=cpu_s,
               wall_s=time.time() - t0, params=sum(p.numel() for p in probe.parameters()))
    print(f"[{name}] {json.dumps(out)}", flush=True)
    return out


# --------------------------------------------------------------------------------------------------
# Synthetic shapes and speed


# U-Net on synthetic shapes, 5 classes with the background, on one of two kinds of scenes:
# ``detect``: DEMO_SCENES, those of the detection and instance benchmarks (up to 4 shapes of 15-50 % of
# the side); ``default``: synth's defaults (1-15 shapes of 2-60 %).
# The ImageNet EfficientNet-Lite0 encoder: shape classes need features a scratch encoder learns slowly,
# and at 128 px its step costs about as much as a width-16 scratch U-Net's (0.67 vs 0.54 CPU s for 8 images).
SYNTH_UNET_ARGS = {"encoder": "efficientnet_lite0", "depth": 5, "width": 16}
SYNTH_SCENES = {"detect": DEMO_SCENES, "default": {}}
SCENE_TEXT = {"detect": "up to 4 shapes of 15-50 % of the side", "default": "1-15 shapes of 2-60 % of the side"}


def train_synth(project: Path, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    from zir.data.synth import SynthConfig, write_synth

    size, batch = args.synth_size, 8
    folders = {}
    for split, n, seed in (("train", args.synth_n, 0), ("val", args.synth_n // 5, 10_000)):
        cfg = SynthConfig(task="segment", n=n, seed=seed, image_size=size, **SYNTH_SCENES[args.synth_scenes])
        folders[split] = write_synth(cfg, tmp / f"segment_{split}", progress=False)
    print(f"[synth unet] time={args.synth_minutes} min (zir.engine.budget fits the epochs)", flush=True)
    t0, cpu0 = time.time(), time.process_time()
    result = zir.train(model="unet", model_args=SYNTH_UNET_ARGS, data=str(folders["train"]),
                       val_path=str(folders["val"]), image_size=size, batch_size=batch, augment="light",
                       lr=3e-3, warmup_epochs=0.5, amp=args.amp, time=args.synth_minutes,
                       threads=args.threads, project=str(project), name="synth_unet", progress=False)
    m = result.best_metrics
    out = {"miou": m.get("miou", math.nan), "pixel_accuracy": m.get("pixel_accuracy", math.nan),
           **{k: v for k, v in m.items() if k.startswith("iou/")}, "epochs": result.epochs_done,
           "planned_epochs": result.epochs_done, "cpu_s": time.process_time() - cpu0, "wall_s": time.time() - t0}
    print(f"[synth unet] {json.dumps(out)}", flush=True)
    return out


# Mask R-CNN trains on DEMO_SCENES (the detection benchmark's): with the default scenes (up to 15 shapes
# from 2 % of the side) it learns little that is visible in a CPU budget of minutes.
MASK_RCNN_ARGS = {"roi_batch_size": 128, "frozen_blocks": 3}


def train_instance(project: Path, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``mask_rcnn`` (EfficientNet-Lite0, ImageNet) on synthetic instance scenes: mask and box AP50."""
    from zir.data.synth import SynthConfig, write_synth

    folders = {}
    for split, n, seed in (("train", args.instance_n, 0), ("val", args.instance_n // 4, 10_000)):
        cfg = SynthConfig(task="instance", n=n, seed=seed, image_size=args.instance_size, **DEMO_SCENES)
        folders[split] = write_synth(cfg, tmp / f"instance_{split}", progress=False)
    t0, cpu0 = time.time(), time.process_time()
    result = zir.train(model="mask_rcnn", model_args=MASK_RCNN_ARGS, data=str(folders["train"]),
                       val_path=str(folders["val"]), image_size=args.instance_size, batch_size=4,
                       augment="light", epochs=args.instance_epochs, lr=3e-4, warmup_epochs=0.3,
                       amp=args.amp, time_limit=4 * args.instance_minutes, threads=args.threads,
                       project=str(project), name="synth_mask_rcnn", progress=False)
    m = result.best_metrics
    out = {"segm_ap50": m.get("segm/AP50", math.nan), "segm_ap": m.get("segm/AP", math.nan),
           "bbox_ap50": m.get("bbox/AP50", math.nan), "epochs": result.epochs_done,
           "cpu_s": time.process_time() - cpu0, "wall_s": time.time() - t0}
    print(f"[synth mask_rcnn] {json.dumps(out)}", flush=True)
    return out


@torch.no_grad()
def ms_per_image(predict: Any, image: torch.Tensor, repeats: int) -> float:
    """CPU milliseconds of this process per call (1 thread: the compute time, whatever else the shared
    machine runs), after a warm-up call."""
    predict(image)
    t = time.process_time()
    for _ in range(repeats):
        predict(image)
    return (time.process_time() - t) / repeats * 1000


def speed(args: argparse.Namespace) -> list[tuple[str, float]]:
    import torchvision

    image = torch.rand(3, 512, 512)
    rows = []
    models = {
        "zir unet (scratch, width 16, depth 4)": build_model("unet", 2, 512, {"width": 16}),
        "zir unet (scratch, width 64: the paper's)": build_model("unet", 2, 512, {"width": 64}),
        "zir unet (efficientnet_lite0 encoder)": build_model("unet", 2, 512, {"encoder": "efficientnet_lite0",
                                                                               "pretrained": "none", "depth": 5}),
        "zir fcn-8s (efficientnet_lite0)": build_model("fcn", 2, 512, {"pretrained": "none"}),
        "smp Unet(resnet18)": build_model("smp_unet", 2, 512, {}),
        # untrained: the time of its mask branch depends on how many detections pass the score threshold
        "zir mask_rcnn (efficientnet_lite0, 4 classes, untrained)": build_model("mask_rcnn", 4, 512,
                                                                               {"pretrained": "none"}),
    }
    for name, model in models.items():
        model.eval()
        rows.append((name, ms_per_image(lambda x, m=model: m.predict([x]), image, args.repeats)))
        print(f"[speed] {rows[-1]}", flush=True)
    mrcnn = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    rows.append(("torchvision maskrcnn_resnet50_fpn", ms_per_image(lambda x: mrcnn([x]), image, args.repeats)))
    print(f"[speed] {rows[-1]}", flush=True)
    return rows


# --------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="isbi,synth,instance,speed")
    p.add_argument("--models", default="unet,fcn,smp_unet")
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per model on ISBI")
    p.add_argument("--image-size", type=int, default=512, help="side the ISBI slices are resized to (512: native)")
    p.add_argument("--crop", type=int, default=256, help="ISBI training crops (data.crop; 0 = whole slices)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--augment", default="light", help="ISBI training augmentation preset")
    # EM slices have no up or down, but ISBI's labels sit a fraction of a pixel off the membranes, upwards
    # (the label_offset table), which vertical flips and turns cannot keep: they measured worse (0.0778 vs
    # 0.0745 wrong pixels, one 15-minute run each), so the default stays upright
    p.add_argument("--orientation", default="upright", choices=("upright", "any"), help="ISBI data.orientation")
    p.add_argument("--width", type=int, default=0, help="zir unet width on ISBI (0: the table's 16)")
    p.add_argument("--loss", default="", help="zir unet loss on ISBI (default: the table's ce+dice)")
    # bf16 autocast measured slower here (this CPU shows no AMX; a unet step 1.22 s bf16 vs 0.96 s fp32)
    p.add_argument("--amp", default="none", choices=("none", "bf16"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--synth-n", type=int, default=1000)
    p.add_argument("--synth-size", type=int, default=128)
    p.add_argument("--synth-scenes", default="detect", choices=tuple(SYNTH_SCENES),
                   help="detect: the detection benchmark's scenes; default: synth's default scenes")
    p.add_argument("--synth-minutes", type=float, default=15.0, help="unet CPU budget on synthetic shapes")
    p.add_argument("--instance-n", type=int, default=500)
    p.add_argument("--instance-size", type=int, default=256)
    # 5 epochs of 500 images: about 14 CPU minutes (1.33 CPU s per step of 4 images at 256 px)
    p.add_argument("--instance-epochs", type=int, default=5)
    p.add_argument("--instance-minutes", type=float, default=15.0, help="mask_rcnn budget (wall cap: 4x)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--project", default="", help="keep the runs here (default: a temporary folder)")
    p.add_argument("--rescore", default="", help="comma-separated ISBI run folders (kept with --project) to "
                   "score again on slices 25-29 with 1, 2 and 8 views, without training")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    register_smp()
    parts = args.parts.split(",")
    command = "python " + " ".join(sys.argv)

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(args.project or tmp) / "runs"
        results: dict[str, dict[str, Any]] = {}
        if "isbi" in parts:
            train_dir, val_dir = isbi_split(ISBI, Path(tmp) / "isbi")
            for key in args.models.split(","):
                results[key] = train_isbi(f"isbi_{key}", key, train_dir, val_dir, project, args)
        rescored = rescore(args.rescore.split(","), Path(tmp) / "rescore") if args.rescore else {}
        synth = train_synth(project, Path(tmp), args) if "synth" in parts else None
        instance = train_instance(project, Path(tmp), args) if "instance" in parts else None
        speeds = speed(args) if "speed" in parts else []

    print(f"\n{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, "
          f"{args.threads} torch thread(s) on a 2-core CPU, load average {os.getloadavg()[0]:.1f} at the end, "
          f"torch {torch.__version__}, amp {args.amp}\n"
          f"command: `{command}`\n")
    if results:
        names = {"unet": f"zir unet (scratch, width {args.width or 16}, depth 4, {args.loss or 'ce+dice'})",
                 "unet_effnet": "zir unet (EfficientNet-Lite0 encoder, ImageNet; width 16, depth 5)",
                 "fcn": "zir fcn-8s (EfficientNet-Lite0, ImageNet)",
                 "smp_unet": "smp Unet(resnet18, no pretrained weights)"}
        crop = f"random {args.crop}x{args.crop} crops of " if args.crop else ""
        print(f"ISBI 2012 membranes: train slices 0-24, validate 25-29 at 512x512; trained on {crop}the "
              f"slices at {args.image_size}x{args.image_size}, augment {args.augment}, orientation {args.orientation}, "
              f"batch {args.batch_size}, {args.minutes:g} min of {args.threads} core(s) each (schedule sized to "
              f"{args.minutes:g} x {args.threads} CPU minutes)\n")
        views = tta_views(args.orientation)
        print("Best checkpoint (picked by validation mIoU on the same slices). Pixel error (ISBI) = 1 - the best "
              "F-score of cell pixels over thresholds 0.0-1.0 (the challenge's definition, threshold beside it); "
              "wrong pixels = 1 - pixel accuracy of the arg-max map, also for the last epoch.\n")
        print("| model | params | lr | epochs (planned) | train CPU s | train wall s | pixel error (ISBI) | "
              "wrong pixels | IoU membrane | IoU cell | mIoU | wrong pixels, last epoch | "
              f"{views}-view TTA: pixel error (ISBI) / wrong pixels |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for key, r in results.items():
            tta = (f"{r['tta_isbi_pixel_error']:.4f} / {r['tta_pixel_error']:.4f}" if "tta_pixel_error" in r
                   else "-")  # zir's models only
            print(f"| {names[key]} | {r['params'] / 1e6:.2f} M | {ISBI_MODELS[key][2]['lr']:g} | {r['epochs']} "
                  f"({r['planned_epochs']}) | {r['cpu_s']:.0f} | {r['train_s']:.0f} | "
                  f"{r['isbi_pixel_error']:.4f} (t {r['isbi_threshold']:g}) | {r['pixel_error']:.4f} | "
                  f"{r['iou_membrane']:.4f} | {r['iou_cell']:.4f} | {r['miou']:.4f} | {r['last_pixel_error']:.4f} | "
                  f"{tta} |")
    if rescored:
        print("ISBI runs scored again on slices 25-29 (best checkpoint): pixel error (ISBI) / wrong pixels\n")
        print("| run | 1 view | 2 views (mirror image) | 8 views (flips and turns) |\n|---|---|---|---|")
        for run, by_views in rescored.items():
            print(f"| {run} | " + " | ".join(f"{m['isbi_pixel_error']:.4f} / {m['pixel_error']:.4f}"
                                           for m in by_views.values()) + " |")
    if "isbi" in parts or "labels" in parts:
        print("\nISBI labels against the image: correlation of brightness with the cell label moved by dy (rows) "
              "and dx (columns) of -1, 0, +1 pixels, all 30 slices\n")
        print("| dy \\ dx | -1 | 0 | +1 |\n|---|---|---|---|")
        for dy, row in zip((-1, 0, 1), label_offset(ISBI)):
            print(f"| {dy:+d} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    if synth:
        n_val = args.synth_n // 5
        print(f"\nSynthetic shapes ({SCENE_TEXT[args.synth_scenes]}, 5 classes with the background; "
              f"{args.synth_n} training and {n_val} validation scenes of {args.synth_size}x{args.synth_size}), "
              f"batch 8, augment light, {args.synth_minutes:g} min of {args.threads} core(s) (schedule sized to "
              f"{args.synth_minutes:g} x {args.threads} CPU minutes)\n")
        names = ["background", "circle", "square", "triangle", "star"]
        print(f"| model | epochs (planned) | train CPU s | train wall s | val mIoU | pixel acc | "
              f"{' | '.join('IoU ' + n for n in names)} |")
        print("|---|---|---|---|---|---|" + "---|" * len(names))
        r = synth
        ious = " | ".join(f"{r.get('iou/' + n, math.nan):.4f}" for n in names)
        print(f"| zir unet (EfficientNet-Lite0 encoder, ImageNet; width 16, depth 5) | {r['epochs']} "
              f"({r['planned_epochs']}) | {r['cpu_s']:.0f} | {r['wall_s']:.0f} | {r['miou']:.4f} | "
              f"{r['pixel_accuracy']:.4f} | {ious} |")
    if instance:
        print(f"\nSynthetic instance scenes ({args.instance_n} training, {args.instance_n // 4} validation images of "
              f"{args.instance_size}x{args.instance_size}, up to 4 shapes of 15-50 % of the side), batch 4, "
              f"augment light, {args.threads} thread(s)\n")
        print("| model | epochs | train CPU s | train wall s | mask AP50 | mask AP | box AP50 |")
        print("|---|---|---|---|---|---|---|")
        r = instance
        print(f"| zir mask_rcnn (EfficientNet-Lite0, ImageNet; {MASK_RCNN_ARGS}) | {r['epochs']} | {r['cpu_s']:.0f} | "
              f"{r['wall_s']:.0f} | {r['segm_ap50']:.4f} | {r['segm_ap']:.4f} | {r['bbox_ap50']:.4f} |")
    if speeds:
        print(f"\nInference, one 512x512 image, batch 1, {args.threads} thread(s), float32, CPU time of the "
              "process\n")
        print("| model | CPU ms per image |")
        print("|---|---|")
        for name, ms in speeds:
            print(f"| {name} | {ms:.0f} |")


if __name__ == "__main__":
    main()
