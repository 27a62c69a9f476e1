"""Benchmark: Panoptic FPN on zir's synthetic panoptic scenes (four shape "things" over sky and ground
"stuff"), trained for a CPU time budget; panoptic quality on held-out scenes and inference time.

Training and test scenes are written by ``zir data synth --task panoptic`` with different seeds (so no test
scene is a training scene); the scene settings are printed with the table. The model trains through
``zir.train`` with ``time=--minutes`` (the epochs fitted to the budget; or ``--epochs`` with the budget as the hard stop), is scored by zir's PanopticMetrics (the panopticapi definition)
on the test scenes, and is timed on 512 x 512 images at batch 1.

    python benchmarks/panoptic.py [--minutes 20] [--epochs 6] [--image-size 256] [--n 400] [--threads 1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import zir
from zir.analysis.bench import machine
from zir.data.synth import SynthConfig, write_synth

# Scenes: fewer and larger objects than `zir data synth`'s defaults (1-15 objects of 2-60% of the side),
# whose smallest shapes are a few pixels wide at 256 px and cannot be segmented at this budget.
SCENES = dict(min_objects=1, max_objects=6, min_scale=0.1, max_scale=0.5)
SETTINGS = dict(batch_size=4, lr=3e-4, warmup_epochs=0.3, amp="none", augment="light",
                model_args={"frozen_blocks": 3, "roi_batch_size": 128})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--epochs", type=int, default=0,
                   help="0: fitted to --minutes (zir's time=); N: N epochs, --minutes as the hard stop (time_limit)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--n", type=int, default=400, help="training scenes (test: a quarter of it)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="folder for data and the run (default: a temporary one)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.out or tempfile.mkdtemp(prefix="zir-panoptic-"))
    train_dir, test_dir = root / "train", root / "test"
    write_synth(SynthConfig(task="panoptic", n=args.n, seed=0, image_size=args.image_size, **SCENES), train_dir,
                overwrite=True)
    write_synth(SynthConfig(task="panoptic", n=max(1, args.n // 4), seed=1, image_size=args.image_size, **SCENES),
                test_dir, overwrite=True)

    t0 = time.perf_counter()
    result = zir.train(model="panoptic_fpn", data=str(train_dir), val_path=str(test_dir), image_size=args.image_size,
                       threads=args.threads, project=str(root / "runs"), name="panoptic_fpn",
                       **({"time": args.minutes} if args.epochs == 0 else {"epochs": args.epochs, "time_limit": args.minutes}), **SETTINGS)
    train_min = (time.perf_counter() - t0) / 60
    metrics = json.loads((result.run_dir / "val_metrics.json").read_text())

    model = zir.load(result.run_dir).model
    images = [torch.rand(3, 512, 512) for _ in range(6)]
    model.predict(images[:1])  # warm-up
    times = []
    for im in images[1:]:
        t = time.perf_counter()
        model.predict([im])
        times.append((time.perf_counter() - t) * 1000)

    print(f"\n### Panoptic FPN on synthetic panoptic scenes ({datetime.date.today()}, {machine()}, "
          f"{args.threads} thread(s), torch {torch.__version__})\n")
    print(f"Command: `python benchmarks/panoptic.py --minutes {args.minutes:g} --epochs {args.epochs} --image-size {args.image_size} "
          f"--n {args.n} --threads {args.threads}`; scenes {SCENES}, {args.n} training / {max(1, args.n // 4)} "
          f"test images of {args.image_size} px; settings {SETTINGS}.\n")
    print("| model | epochs | train min | PQ | SQ | RQ | PQ things | PQ stuff | ms / image at 512 |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| panoptic_fpn | {result.epochs_done} | {train_min:.1f} | {metrics['PQ']:.3f} | {metrics['SQ']:.3f} | "
          f"{metrics['RQ']:.3f} | {metrics['PQ_th']:.3f} | {metrics['PQ_st']:.3f} | {statistics.median(times):.0f} |")
    print("\nPer class: " + ", ".join(f"{k[3:]} {v:.3f}" for k, v in metrics.items() if k.startswith("PQ/")))
    print(f"\nrun: {result.run_dir}")


if __name__ == "__main__":
    main()
