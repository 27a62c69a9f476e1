"""Benchmark: semantic segmentation (issue 5) on ISBI 2012 membranes and on synthetic shapes, and speed.

* ISBI 2012 (``--isbi``, the 30 training slices of the challenge, 512 x 512): train on slices 0-24,
  validate on 25-29, each model for the same wall-clock budget (``--minutes``) with the same data
  pipeline, loss (cross-entropy + soft Dice), optimiser and augmentation (``standard``: flips,
  scale/shift, elastic deformation, colour, noise). Metrics at the slices' native 512 x 512 pixels:
  pixel error = 1 - pixel accuracy (the challenge's measure) and IoU of each class (membrane, cell).
  Peers: ``segmentation_models_pytorch.Unet("resnet18", encoder_weights=None)``, trained through the
  same zir loop (wrapped as a zir model in this script only).
* Synthetic shapes (``synth:segment``): ``unet`` mean IoU on held-out scenes.
* Inference ms per 512 x 512 image (batch 1, after warm-up) for each model, beside smp's Unet and
  torchvision's ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)``.

    .venv/bin/pip install segmentation-models-pytorch
    .venv/bin/python benchmarks/segment.py [--minutes 15] [--threads 1] [--parts isbi,synth,speed]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
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
from zir.metrics.semantic import SemanticMetrics
from zir.models import MODELS, ModelSpec, build_model
from zir.models.base import ZirModel
from zir.models.fcn import resize_longer
from zir.models.seg_losses import cross_entropy, semantic_targets, soft_dice

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
            probs = self(resize_longer(image.unsqueeze(0), self.cfg.image_size)).float().softmax(1)
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)[0]
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


def step_seconds(model: ZirModel, batch: int, size: int, amp: str) -> float:
    """Seconds of one training step (forward, loss, backward) on random data, after one warm-up step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 3, size, size)
    targets = [{"semantic": (torch.rand(size, size) > 0.3).long(), "size": (size, size)} for _ in range(batch)]
    times = []
    for _ in range(2):
        t = time.time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            loss = sum(model.loss(images, targets).values())
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.time() - t)
    return times[-1]


def native_metrics(run_dir: Path, val_dir: Path) -> dict[str, float]:
    """Pixel error and per-class IoU of a run's best weights on the validation slices at 512 x 512."""
    predictor = zir.load(run_dir)
    metric = SemanticMetrics(2, classes=["membrane", "cell"])
    for image_path in sorted((val_dir / "image").glob("*.png")):
        label = torch.from_numpy(read_label_png(val_dir / "label" / image_path.name).astype("int64"))
        target = (label > 127).long()  # 0 = membrane, 255 = cell interior
        pred = predictor.predict(read_image(image_path).float() / 255)[0]
        metric.update([pred], [target])
    m = metric.compute()
    return {"pixel_error": 1 - m["pixel_accuracy"], "iou_membrane": m["iou/membrane"], "iou_cell": m["iou/cell"],
            "miou": m["miou"]}


def train_isbi(name: str, model: str, model_args: dict[str, Any], train_dir: Path, val_dir: Path, project: Path,
               args: argparse.Namespace) -> dict[str, Any]:
    size, batch = args.image_size, args.batch_size
    probe = build_model(model, 2, size, model_args)
    step_s = step_seconds(probe, batch, size, args.amp)
    steps = math.ceil(25 / batch)
    epochs = max(1, int(args.minutes * 60 * 0.8 / (steps * step_s * 1.15)))  # data, evaluation, a busy CPU
    print(f"[{name}] {step_s:.2f} s per step of {batch} -> {epochs} epochs in {args.minutes} min", flush=True)
    t0 = time.time()
    result = zir.train(model=model, model_args=model_args, data=str(train_dir), val_path=str(val_dir),
                       image_size=size, batch_size=batch, augment="standard", epochs=epochs, lr=args.lr,
                       warmup_epochs=min(2.0, epochs / 10), amp=args.amp, time_limit=args.minutes,
                       threads=args.threads, project=str(project), name=name, progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    out = native_metrics(result.run_dir, val_dir)
    out.update(epochs=result.epochs_done, train_s=rows[-1]["time_s"], wall_s=time.time() - t0,
               params=sum(p.numel() for p in probe.parameters()))
    print(f"[{name}] {json.dumps(out)}", flush=True)
    return out


# --------------------------------------------------------------------------------------------------
# Synthetic shapes and speed


def train_synth(project: Path, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.time()
    result = zir.train(model="unet", model_args={"width": args.synth_width, "depth": args.synth_depth},
                       data="synth:segment",
                       synth_n=args.synth_n, val_split=0.2, image_size=96, batch_size=16, epochs=args.synth_epochs,
                       lr=3e-3, warmup_epochs=0.5, amp=args.amp, threads=args.threads, project=str(project),
                       name="synth_unet", progress=False)
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    out = {"miou": result.best_metrics.get("miou", float("nan")),
           "pixel_accuracy": result.best_metrics.get("pixel_accuracy", float("nan")),
           "epochs": result.epochs_done, "train_s": rows[-1]["time_s"], "wall_s": time.time() - t0}
    print(f"[synth unet] {json.dumps(out)}", flush=True)
    return out


@torch.no_grad()
def ms_per_image(predict: Any, image: torch.Tensor, repeats: int) -> float:
    predict(image)  # warm-up
    t = time.perf_counter()
    for _ in range(repeats):
        predict(image)
    return (time.perf_counter() - t) / repeats * 1000


def speed(args: argparse.Namespace) -> list[tuple[str, float]]:
    import torchvision

    image = torch.rand(3, 512, 512)
    rows = []
    models = {
        f"zir unet (scratch, width {args.width}, depth 4)": build_model("unet", 2, 512, {"width": args.width}),
        "zir unet (scratch, width 64: the paper's)": build_model("unet", 2, 512, {"width": 64}),
        "zir unet (efficientnet_lite0 encoder)": build_model("unet", 2, 512, {"encoder": "efficientnet_lite0",
                                                                               "pretrained": "none", "depth": 5}),
        "zir fcn-8s (efficientnet_lite0)": build_model("fcn", 2, 512, {"pretrained": "none"}),
        "smp Unet(resnet18)": build_model("smp_unet", 2, 512, {}),
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
    p.add_argument("--parts", default="isbi,synth,speed")
    p.add_argument("--models", default="unet,fcn,smp_unet")
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per model on ISBI")
    p.add_argument("--image-size", type=int, default=256, help="side the ISBI slices are resized to for training")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--width", type=int, default=16, help="zir unet width on ISBI")
    # bf16 autocast measured slower here (no AMX: depthwise convolutions fall back), so fp32 by default
    p.add_argument("--amp", default="none", choices=("none", "bf16"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--synth-n", type=int, default=600)
    p.add_argument("--synth-epochs", type=int, default=8)
    p.add_argument("--synth-width", type=int, default=16)
    p.add_argument("--synth-depth", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--project", default="", help="keep the runs here (default: a temporary folder)")
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
            configs = {"unet": ("unet", {"width": args.width, "depth": 4}),
                       "unet_effnet": ("unet", {"encoder": "efficientnet_lite0", "width": 16, "depth": 5}),
                       "fcn": ("fcn", {"variant": "8s"}),
                       "smp_unet": ("smp_unet", {})}
            for key in args.models.split(","):
                model, model_args = configs[key]
                results[key] = train_isbi(f"isbi_{key}", model, model_args, train_dir, val_dir, project, args)
        synth = train_synth(project, args) if "synth" in parts else None
        speeds = speed(args) if "speed" in parts else []

    print(f"\n{datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, "
          f"{args.threads} torch thread(s) on a shared 2-core CPU, torch {torch.__version__}, amp {args.amp}\n"
          f"command: `{command}`\n")
    if results:
        names = {"unet": f"zir unet (scratch, width {args.width}, depth 4)",
                 "unet_effnet": "zir unet (EfficientNet-Lite0 encoder, ImageNet; width 16, depth 5)",
                 "fcn": "zir fcn-8s (EfficientNet-Lite0, ImageNet)",
                 "smp_unet": "smp Unet(resnet18, no pretrained weights)"}
        print(f"ISBI 2012 membranes: train slices 0-24, validate 25-29 at 512x512; trained at "
              f"{args.image_size}x{args.image_size}, batch {args.batch_size}, {args.minutes:g} min each\n")
        print("| model | params | epochs | train s | pixel error | IoU membrane | IoU cell | mIoU |")
        print("|---|---|---|---|---|---|---|---|")
        for key, r in results.items():
            print(f"| {names[key]} | {r['params'] / 1e6:.2f} M | {r['epochs']} | {r['train_s']:.0f} | "
                  f"{r['pixel_error']:.4f} | {r['iou_membrane']:.4f} | {r['iou_cell']:.4f} | {r['miou']:.4f} |")
    if synth:
        print(f"\nSynthetic shapes (synth:segment, 5 classes, 96x96): unet width {args.synth_width}, "
              f"depth {args.synth_depth}\n")
        print("| model | train images | epochs | train s | val mIoU | pixel acc |")
        print("|---|---|---|---|---|---|")
        print(f"| zir unet | {args.synth_n} | {synth['epochs']} | {synth['train_s']:.0f} | {synth['miou']:.4f} | "
              f"{synth['pixel_accuracy']:.4f} |")
    if speeds:
        print(f"\nInference, one 512x512 image, batch 1, {args.threads} thread(s), float32\n")
        print("| model | ms per image |")
        print("|---|---|")
        for name, ms in speeds:
            print(f"| {name} | {ms:.0f} |")


if __name__ == "__main__":
    main()
