"""Benchmark: every zir detector (registry task ``detect``) beside Ultralytics YOLOv8n, same time budget.

Data sets:
  * ``raccoon``: ``../shared/data/raccoon`` with its own split (``data/train_labels.csv``: 160 images,
    173 boxes for training; ``data/test_labels.csv``: 40 images, 44 boxes for testing). The VOC XMLs
    give the boxes; the split is written as two COCO files (zir's VOC reader and COCO writer).
  * ``synth``: zir's synthetic shapes (``zir data synth --task detect``), training and test scenes from
    different seeds.

Each detector trains for ``--minutes`` of CPU (the epoch count is estimated from a few timed steps so
that the cosine schedule ends with the budget; ``time_limit`` stops it if the estimate was short).
YOLOv8n trains from ``yolov8n.yaml`` (no pretrained weights offline) with Ultralytics' own ``time=``
budget, on the same data written by zir's YOLO writer. Every model is then scored the same way: one
test image at a time at its original size (batch 1, which also gives the inference time), COCO mAP
through zir's faster-coco-eval evaluator on the same ground-truth file.

    python benchmarks/detect.py [--data raccoon,synth] [--minutes 15] [--models all|yolo_v1,...]
                                [--peer yolov8n|none] [--set yolo_v1.lr=1e-3 ...]

Needs ``pip install ultralytics`` (benchmarks/requirements.txt) for the peer.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

import zir
from zir.data.contract import DetectionPrediction
from zir.data.formats.coco import write_coco_json
from zir.data.formats.voc import read_voc
from zir.data.image_io import read_image
from zir.metrics.coco import evaluate_results_json, to_coco_results
from zir.models import MODELS

RACCOON = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "raccoon"

# Settings per zir detector and data set (found with short runs on raccoon; see the README table).
# Keys are run settings (train/data) or model settings, as on the command line.
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    # AdamW at 1e-3 makes YOLO v1's 12544 -> 512 FC layer jump and the head collapse to zero confidence
    # after two epochs; 3e-4 trains smoothly. bf16 autocast is slower than float32 here: EfficientNet's
    # depthwise convolutions get no AMX kernels.
    "yolo_v1": {
        "raccoon": dict(image_size=224, batch_size=16, lr=3e-4, weight_decay=5e-4, warmup_epochs=1.0,
                        amp="none", augment="light", S=7, score_thresh=0.001),
        "synth": dict(image_size=256, batch_size=16, lr=3e-4, weight_decay=5e-4, warmup_epochs=1.0,
                      amp="none", augment="light", S=8, score_thresh=0.001),
    },
    # The settings of the README's raccoon row (8 epochs at 320 px, 12.4 min there): fewer RoIs per image
    # (roi_align's backward dominates a CPU step) and three frozen backbone blocks.
    "faster_rcnn": {
        "raccoon": dict(image_size=320, batch_size=4, lr=3e-4, warmup_epochs=0.3, amp="bf16", augment="light",
                        roi_batch_size=128, frozen_blocks=3),
    },
}
DEFAULTS: dict[str, Any] = dict(image_size=320, batch_size=8, amp="bf16", augment="light")


# --------------------------------------------------------------------------------------------------
# Data


def prepare_raccoon(root: Path, out: Path) -> dict[str, Path]:
    """COCO train/test files of the raccoon set's own split (images stay where they are)."""
    index = read_voc(root)
    split = {name: {row["filename"] for row in csv.DictReader((root / "data" / f"{name}_labels.csv").open())}
             for name in ("train", "test")}
    files = {}
    for name, stems in split.items():
        records = [r for r in index.records if r.path.name in stems]
        if len(records) != len(stems):
            sys.exit(f"{root}: {len(stems) - len(records)} images of {name}_labels.csv have no annotation")
        # File names relative to the JSON's folder, so zir's COCO reader finds the images where they are.
        files[name] = write_coco_json(records, index.classes, out / "coco" / f"raccoon_{name}.json", out / "coco")
    return files


def prepare_synth(out: Path, n_train: int = 800, n_test: int = 200, size: int = 256) -> dict[str, Path]:
    """Synthetic shapes written to disk (COCO), training and test scenes from different seeds."""
    from zir.data.synth import SynthConfig, write_synth

    files = {}
    for name, n, seed in (("train", n_train, 0), ("test", n_test, 10_000)):
        folder = write_synth(SynthConfig(task="detect", n=n, seed=seed, image_size=size), out / f"synth_{name}",
                             progress=False)
        files[name] = folder / "annotations.json"
    return files


def coco_images(gt_json: Path) -> list[tuple[int, Path]]:
    """``(image_id, path)`` of every image of a COCO file, found where zir's COCO reader finds them."""
    from zir.data.formats._common import choose_image_root

    data = json.loads(gt_json.read_text())
    root = choose_image_root(gt_json.parent, [im["file_name"] for im in data["images"]])
    return [(im["id"], root / im["file_name"]) for im in data["images"]]


# --------------------------------------------------------------------------------------------------
# Scoring: the same for every model


def score(predict_one, gt_json: Path, images: list[tuple[int, Path]], out: Path) -> dict[str, float]:
    """Predict each test image alone (batch 1); COCO metrics and the median inference time."""
    predictions, ids, times = [], [], []
    for k, (image_id, path) in enumerate(images):
        t0 = time.perf_counter()
        pred = predict_one(path)
        if k > 0:  # the first call warms up
            times.append(time.perf_counter() - t0)
        predictions.append(pred)
        ids.append(image_id)
    results = out / "results.json"
    to_coco_results(predictions, ids, results)
    metrics = evaluate_results_json(gt_json, results, iou_types=("bbox",))
    return {"mAP50": metrics["bbox/AP50"], "mAP50-95": metrics["bbox/AP"], "ms": 1000 * statistics.median(times)}


def mean_box_baseline(files: dict[str, Path], work: Path) -> dict[str, Any]:
    """No learning: one box per test image at the training set's mean relative box (centre and size).

    Raccoon boxes are large and central, so this prior already scores a sizeable mAP50: a detector's
    number means something only well above it.
    """
    train = json.loads(files["train"].read_text())
    size = {im["id"]: (im["width"], im["height"]) for im in train["images"]}
    rel = torch.tensor([[(x + w / 2) / size[a["image_id"]][0], (y + h / 2) / size[a["image_id"]][1],
                         w / size[a["image_id"]][0], h / size[a["image_id"]][1]]
                        for a in train["annotations"] for x, y, w, h in [a["bbox"]]]).mean(0)
    cx, cy, w, h = rel.tolist()

    def predict_one(path: Path) -> DetectionPrediction:
        H, W = read_image(path).shape[-2:]
        box = torch.tensor([[(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H]])
        return DetectionPrediction(boxes=box, scores=torch.ones(1), labels=torch.zeros(1, dtype=torch.long))

    out = work / "mean_box"
    out.mkdir(exist_ok=True)
    m = score(predict_one, files["test"], coco_images(files["test"]), out)
    return {**m, "ms": float("nan"), "train_s": 0.0, "epochs": 0, "settings": {}}


def run_zir(model: str, files: dict[str, Path], data: str, minutes: float, work: Path,
            overrides: dict[str, Any]) -> dict[str, Any]:
    settings = {**DEFAULTS, **SETTINGS.get(model, {}).get(data, {}), **overrides}
    settings.update(model=model, data=str(files["train"]), val_path=str(files["test"]), project=str(work),
                    name=f"{model}_{data}", exist_ok=True, threads=torch.get_num_threads())
    epochs = settings.pop("epochs", None) or estimate_epochs(settings, minutes)
    t0 = time.time()
    result = zir.train(epochs=epochs, time_limit=minutes, eval_every=max(1, epochs // 3), progress=False,
                       **settings)
    train_s = time.time() - t0
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    predictor = zir.load(result.run_dir / "weights" / "last.safetensors")
    # Evaluation wants every detection; the model's own score threshold (0.05) already keeps them.
    m = score(lambda p: predictor.predict(read_image(p).as_subclass(torch.Tensor).float() / 255)[0],
              files["test"], coco_images(files["test"]), result.run_dir)
    print(f"  {model}: {len(rows)} epochs, train loss {rows[-1].get('train/coord', float('nan')):.3f} (coord)",
          flush=True)
    return {**m, "train_s": rows[-1]["time_s"], "wall_s": train_s, "epochs": len(rows), "settings": settings}


def estimate_epochs(settings: dict[str, Any], minutes: float) -> int:
    """Epochs that fit ``minutes``: time a few training steps of the real model on the real loader."""
    from zir.config import load_config
    from zir.engine.data import build_datasets, build_loader
    from zir.engine.evaluate import autocast
    from zir.models import build_model

    cfg = load_config(overrides={k: v for k, v in settings.items() if k not in ("threads",)})
    bundle = build_datasets(cfg.data)
    loader = build_loader(bundle.train, cfg.data, train=True, seed=0)
    model = build_model(cfg.model, len(bundle.classes), cfg.data.image_size, cfg.model_args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = []
    for i, batch in enumerate(loader):
        t0 = time.perf_counter()
        with autocast(torch.device("cpu"), cfg.train.amp):
            loss = sum(model.loss(batch.images, batch.targets).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t0)
        if i == 4:
            break
    per_step = statistics.median(times[1:]) * 1.15  # data loading and evaluation on top
    epochs = max(1, math.floor(minutes * 60 / (per_step * len(loader))))
    print(f"  {cfg.model}: {per_step:.2f} s/step, {len(loader)} steps/epoch -> {epochs} epochs", flush=True)
    return epochs


def run_yolov8n(files: dict[str, Path], data: str, minutes: float, work: Path, image_size: int) -> dict[str, Any]:
    """Ultralytics YOLOv8n from scratch (yolov8n.yaml) in the same budget, scored like the zir models."""
    threads = torch.get_num_threads()  # Ultralytics drops to one thread on a 2-core machine: restore it
    os.environ["YOLO_OFFLINE"] = "1"
    from ultralytics import YOLO

    from zir.data.formats import open_dataset
    from zir.data.formats.yolo import write_yolo

    torch.set_num_threads(threads)
    root = work / f"yolo_{data}"
    shutil.rmtree(root, ignore_errors=True)
    write_yolo(open_dataset(files["train"]), root, split="train")
    data_yaml = write_yolo(open_dataset(files["test"]), root, split="val", overwrite=True)
    spec = yaml.safe_load(Path(data_yaml).read_text())
    spec.update(train="images/train", val="images/val")
    Path(data_yaml).write_text(yaml.safe_dump(spec))

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_start", lambda trainer: torch.set_num_threads(threads))
    model.add_callback("on_train_epoch_start", lambda trainer: torch.set_num_threads(threads))
    t0 = time.time()
    model.train(data=str(data_yaml), epochs=1000, time=minutes / 60, imgsz=image_size, batch=16, device="cpu",
                workers=0, plots=False, pretrained=False, amp=False, project=str(work), name=f"v8n_{data}",
                exist_ok=True, verbose=False, val=False, seed=0)
    train_s = time.time() - t0
    torch.set_num_threads(threads)
    best = Path(model.trainer.save_dir) / "weights" / "last.pt"
    net = YOLO(str(best))

    def predict_one(path: Path) -> DetectionPrediction:
        r = net.predict(str(path), imgsz=image_size, conf=0.001, iou=0.6, max_det=100, device="cpu",
                        verbose=False)[0].boxes
        return DetectionPrediction(boxes=r.xyxy.float(), scores=r.conf.float(), labels=r.cls.long())

    m = score(predict_one, files["test"], coco_images(files["test"]), root)
    return {**m, "train_s": train_s, "wall_s": train_s, "epochs": model.trainer.epoch + 1,
            "settings": {"imgsz": image_size, "batch": 16, "time_h": minutes / 60}}


# --------------------------------------------------------------------------------------------------


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, _, value = item.partition("=")
        model, _, name = key.partition(".")
        out.setdefault(model, {})[name] = yaml.safe_load(value)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="raccoon,synth", help="comma list: raccoon, synth")
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per model and data set")
    p.add_argument("--models", default="all", help="zir detectors (registry task detect): comma list, all or none")
    p.add_argument("--peer", default="yolov8n", choices=("yolov8n", "none"))
    p.add_argument("--peer-size", type=int, default=320, help="YOLOv8n image size")
    p.add_argument("--set", nargs="*", default=[], metavar="MODEL.KEY=VALUE", help="override a setting")
    p.add_argument("--threads", type=int, default=2, help="torch threads for every model (2 = this CPU's cores)")
    p.add_argument("--raccoon", type=Path, default=RACCOON)
    p.add_argument("--keep", type=Path, help="keep runs here instead of a temporary folder")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    detectors = [n for n, s in MODELS.items() if s.task == "detect"]
    models = detectors if args.models == "all" else [] if args.models == "none" else args.models.split(",")
    overrides = parse_overrides(args.set)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for data in args.data.split(","):
            files = prepare_raccoon(args.raccoon.resolve(), work) if data == "raccoon" else prepare_synth(work)
            rows.append((data, "mean training box (no learning)", mean_box_baseline(files, work)))
            for model in models:
                print(f"{data}: training {model} for {args.minutes} min", flush=True)
                rows.append((data, model, run_zir(model, files, data, args.minutes, work, overrides.get(model, {}))))
                print("  ", _row(*rows[-1]), flush=True)
            if args.peer == "yolov8n":
                print(f"{data}: training YOLOv8n for {args.minutes} min", flush=True)
                rows.append((data, "YOLOv8n (Ultralytics)", run_yolov8n(files, data, args.minutes, work,
                                                                        args.peer_size)))
                print("  ", _row(*rows[-1]), flush=True)

    print(f"\n{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("`python benchmarks/detect.py " + " ".join(sys.argv[1:]) + "`\n")
    print("| data | model | mAP50 | mAP50-95 | train min | epochs | inference ms/img (batch 1) | settings |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(_row(*row))


def _row(data: str, model: str, r: dict[str, Any]) -> str:
    shown = {k: v for k, v in r["settings"].items()
             if k not in ("model", "data", "val_path", "project", "name", "exist_ok")}
    return (f"| {data} | {model} | {r['mAP50']:.3f} | {r['mAP50-95']:.3f} | {r['train_s'] / 60:.1f} | "
            f"{r['epochs']} | {r['ms']:.0f} | {' '.join(f'{k}={v}' for k, v in shown.items())} |")


if __name__ == "__main__":
    main()
