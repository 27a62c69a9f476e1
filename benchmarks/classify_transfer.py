"""Transfer learning on small data: scratch vs features vs finetune, each without and with augmentation.

The lecture's claim, measured: on a few hundred images, starting from ImageNet weights beats training
the same network from random weights by a wide margin, a frozen feature extractor trains in seconds,
and augmentation helps the networks that see the images each epoch. Every run is EfficientNet-Lite0
(``model=efficientnet_lite0``) with the same settings except ``transfer`` and ``data.augment``:

* ``scratch``: random weights, one learning rate;
* ``features``: frozen ImageNet backbone, run once over the data; only the linear head trains on the
  cached features (augmentation does not apply: the features are computed once, see
  ``zir/engine/features.py``, so there is one ``features`` row per dataset); its epochs cost
  milliseconds, so it gets ``--feature-epochs`` (50) instead of ``--epochs``;
* ``finetune``: ImageNet weights, all layers, the backbone at 0.1 x the head's learning rate.

Datasets:

* ``synth``: zir's synthetic shapes (``data=synth:classify``), ``--synth-n`` training images, half as many
  validation images from other seeds (``val_split``);
* ``raccoon-crops`` (with ``--raccoon DIR``, the raccoon dataset: VOC-like ``data/train_labels.csv`` and
  ``data/test_labels.csv`` + ``images/``): a two-class photo set built from it into a temporary folder:
  each raccoon box (with a 10% margin) is a ``raccoon`` image, and a square crop of the same photo that
  hardly overlaps any raccoon (at most 10% of the crop) is a ``background`` image; the training photos
  give the training set, the test photos the validation set, so no photo is in both;
* ``--data PATH``: any ImageFolder (``PATH/<class>/*.jpg``; ``--val-data`` or a 20% split).

Columns: best validation accuracy over the epochs, error reduction against ``scratch`` without
augmentation, ``(E_old - E_new) / E_old``, the training loop's seconds (``time_s`` of the last epoch)
and the whole run's wall seconds (model build, feature cache, training, evaluation, report). The
time to 95% is the training loop's, so for ``features`` it leaves out the one pass of the backbone.

    .venv/bin/python benchmarks/classify_transfer.py [--raccoon /path/to/raccoon] [--data PATH]
        [--synth-n 200] [--image-size 64] [--epochs 8] [--feature-epochs 50] [--amp bf16]
        [--augment none,standard] [--modes scratch,features,finetune] [--threads 1]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image

import zir
from zir.metrics.classification import error_reduction

MODES = ("scratch", "features", "finetune")


def build_raccoon_crops(raccoon: Path, out: Path, seed: int = 0) -> dict[str, dict[str, int]]:
    """Write ``out/{train,val}/{raccoon,background}/*.jpg``; returns the image count per split and class."""
    rng = random.Random(seed)
    counts: dict[str, dict[str, int]] = {}
    for split, csv_name in (("train", "train_labels.csv"), ("val", "test_labels.csv")):
        boxes: dict[str, list[tuple[int, int, int, int]]] = defaultdict(list)
        with open(raccoon / "data" / csv_name) as f:
            for row in csv.DictReader(f):
                boxes[row["filename"]].append(tuple(int(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")))
        counts[split] = {"raccoon": 0, "background": 0}
        for cls in counts[split]:
            (out / split / cls).mkdir(parents=True, exist_ok=True)
        for name in sorted(boxes):
            image = Image.open(raccoon / "images" / name).convert("RGB")
            W, H = image.size
            for k, (x1, y1, x2, y2) in enumerate(boxes[name]):
                mx, my = round(0.1 * (x2 - x1)), round(0.1 * (y2 - y1))
                crop = image.crop((max(0, x1 - mx), max(0, y1 - my), min(W, x2 + mx), min(H, y2 + my)))
                crop.save(out / split / "raccoon" / f"{Path(name).stem}_{k}.jpg", quality=95)
                counts[split]["raccoon"] += 1
            for _ in range(200):  # one background square per photo, where one fits
                s = round(rng.uniform(0.25, 0.5) * min(W, H))
                x, y = rng.randint(0, W - s), rng.randint(0, H - s)
                covered = sum(max(0, min(x + s, b[2]) - max(x, b[0])) * max(0, min(y + s, b[3]) - max(y, b[1]))
                              for b in boxes[name])
                if covered <= 0.1 * s * s:
                    image.crop((x, y, x + s, y + s)).save(out / split / "background" / f"{Path(name).stem}.jpg",
                                                          quality=95)
                    counts[split]["background"] += 1
                    break
    return counts


def run(data: dict, mode: str, augment: str, args: argparse.Namespace, project: str) -> dict:
    t0 = time.time()
    epochs = args.feature_epochs if mode == "features" else args.epochs
    result = zir.train(model="efficientnet_lite0", transfer=mode, augment=augment, epochs=epochs,
                       lr=args.lr, batch_size=32, warmup_epochs=0.5, amp=args.amp, threads=args.threads, project=project,
                       name=f"{data['name']}-{mode}-{augment}", progress=False, **data["settings"])
    wall = time.time() - t0
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    reached = next((r for r in rows if r.get("val/accuracy", 0) >= 0.95), None)
    return {"accuracy": max(r.get("val/accuracy", 0.0) for r in rows), "loop_s": rows[-1]["time_s"],
            "wall_s": wall, "to95": reached["time_s"] if reached else None, "epochs": epochs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="an ImageFolder to benchmark besides the synthetic shapes")
    p.add_argument("--val-data", default="", help="its validation ImageFolder (default: a 20%% split)")
    p.add_argument("--raccoon", help="the raccoon dataset folder: adds the raccoon-vs-background crop set")
    p.add_argument("--synth-n", type=int, default=200, help="synthetic training images")
    p.add_argument("--no-synth", action="store_true", help="skip the synthetic shapes")
    p.add_argument("--image-size", type=int, default=64, help="synthetic shapes' side")
    p.add_argument("--photo-size", type=int, default=96, help="photo sets' side")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--feature-epochs", type=int, default=50,
                   help="epochs of transfer=features: cheap, as only the head trains on cached features")
    p.add_argument("--lr", type=float, default=3e-3, help="the head's (and scratch's) learning rate")
    p.add_argument("--amp", default="bf16", choices=("none", "bf16"))
    p.add_argument("--augment", default="none,standard", help="comma-separated presets")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine, 2 threads per process oversubscribe it)")
    args = p.parse_args()
    augments, modes = args.augment.split(","), args.modes.split(",")

    with tempfile.TemporaryDirectory(prefix="zir-transfer-") as tmp:
        datasets = []
        if not args.no_synth:
            datasets.append({"name": "synth", "desc": f"synthetic shapes, {args.synth_n} train / "
                             f"{args.synth_n // 2} val, {args.image_size} px",
                             "settings": {"data": "synth:classify", "synth_n": args.synth_n, "val_split": 0.5,
                                          "image_size": args.image_size}})
        if args.raccoon:
            counts = build_raccoon_crops(Path(args.raccoon), Path(tmp) / "raccoon-crops")
            desc = ", ".join(f"{s}: " + " + ".join(f"{n} {c}" for c, n in counts[s].items()) for s in counts)
            datasets.append({"name": "raccoon-crops", "desc": f"raccoon vs background crops ({desc}), "
                             f"{args.photo_size} px",
                             "settings": {"data": str(Path(tmp) / "raccoon-crops" / "train"),
                                          "val_path": str(Path(tmp) / "raccoon-crops" / "val"),
                                          "image_size": args.photo_size}})
        if args.data:
            datasets.append({"name": Path(args.data).name, "desc": f"{args.data}, {args.photo_size} px",
                             "settings": {"data": args.data, "val_path": args.val_data,
                                          "image_size": args.photo_size}})

        load = os.getloadavg()
        print(f"\n{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{args.threads} torch thread(s), load average {load[0]:.1f} at the start, "
              f"torch {torch.__version__}\n\n`{' '.join(map(shlex.quote, ['python', *sys.argv]))}`\n")
        for data in datasets:
            print(f"\n**{data['desc']}**, EfficientNet-Lite0, lr {args.lr}, batch 32, amp {args.amp}\n")
            print("| transfer | augment | epochs | best val acc | error reduction vs scratch/none | time to 95% "
                  "| train loop s | wall s |")
            print("|---|---|---|---|---|---|---|---|")
            base = None
            for mode in modes:
                for augment in augments:
                    if mode == "features" and augment != augments[0]:
                        continue  # features are computed once, without augmentation
                    r = run(data, mode, augment, args, tmp)
                    error = 1 - r["accuracy"]
                    if base is None and mode == "scratch" and augment == "none":
                        base = error
                    er = f"{error_reduction(base, error):+.1f}%" if base else "-"
                    to95 = f"{r['to95']:.0f} s" if r["to95"] is not None else "not reached"
                    print(f"| {mode} | {augment} | {r['epochs']} | {r['accuracy']:.4f} | {er} | {to95} | {r['loop_s']:.0f} "
                          f"| {r['wall_s']:.0f} |", flush=True)
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
