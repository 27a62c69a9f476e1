"""Benchmark: does heavy augmentation make a model more robust to weather? rPC on the weather corruptions.

Two ``convnet`` classifiers are trained on the same synthetic shapes (``synth:classify``) with the same
settings and the same budget (``--epochs``, with ``--minutes`` as a hard stop for each), one with augment
preset ``none`` and one with ``heavy`` (which includes one weather effect with probability 0.3; the presets
are in ``zir/augment/presets.py``). Both are then analysed (``zir.analyze``) on the same held-out scenes
with the six weather corruptions (snow, frost, fog, brightness, rain, sun flare) at severities 1-5: clean
accuracy, mPC and rPC = mPC / clean (COCO-C's definitions), each with its bootstrap 95% interval. Runs go
one after the other in this one process, so both see the same machine.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/augment_rpc.py [--epochs 8] [--minutes 6] [--out runs/bench-rpc]
    ... --train-only / --analyze-only   # only train, or analyse the runs already in --out
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch

import zir
from zir.augment.corruptions import WEATHER


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--minutes", type=float, default=6.0, help="hard stop per training (time_limit)")
    p.add_argument("--n", type=int, default=3000, help="synthetic scenes (a quarter held out)")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--out", default="runs/bench-rpc")
    p.add_argument("--presets", default="none,heavy")
    p.add_argument("--analyze-only", action="store_true")
    p.add_argument("--train-only", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    presets = args.presets.split(",")
    rows = []
    for preset in presets:
        run = Path(args.out) / preset
        if not args.analyze_only:
            load, t0 = os.getloadavg()[0], time.time()
            result = zir.train(model="convnet", data="synth:classify", synth_n=args.n, val_split=0.25,
                               image_size=args.image_size, batch_size=64, lr=4e-3, warmup_epochs=0.5,
                               epochs=args.epochs, time_limit=args.minutes, augment=preset, seed=0, threads=1,
                               project=args.out, name=preset, exist_ok=True, progress=False)
            print(f"{preset}: {result.epochs_done} epochs in {time.time() - t0:.0f} s (load {load:.1f})", flush=True)
        if args.train_only:
            continue
        load, t0 = os.getloadavg()[0], time.time()
        zir.analyze(run, corruptions=WEATHER, progress=False)
        a = json.loads((run / "analysis" / "analysis.json").read_text())
        w = a["corruptions"]["weather"]
        epochs = len((run / "metrics.jsonl").read_text().splitlines())  # one line per epoch trained
        rows.append({"preset": preset, "epochs": epochs, "clean": a["clean"]["accuracy"],
                     "clean_ci": a["clean_ci"]["accuracy"],
                     **w, "analyze_s": time.time() - t0, "load": load,
                     "per_corruption": {n: sum(v.values()) / len(v) for n, v in a["corruptions"]["table"].items()}})
        print(json.dumps(rows[-1]), flush=True)

    if not rows:
        return

    def ci(c: list[float]) -> str:
        return f"[{c[0]:.3f}, {c[1]:.3f}]" if c and None not in c else ""

    print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, 1 thread, convnet on synth:classify "
          f"({args.n} scenes, a quarter held out, {args.image_size} px), {args.epochs} epochs each "
          f"(hard stop {args.minutes:g} min); weather corruptions at severities 1-5\n")
    # the epochs each run finished (the hard stop may end a run early)
    names = list(rows[0]["per_corruption"])
    print("| augment | epochs | clean acc | weather mPC | weather rPC | " + " | ".join(names) + " |")
    print("|---|---|---|---|---|" + "---|" * len(names))
    for r in rows:
        print(f"| {r['preset']} | {r['epochs']} | {r['clean']:.3f} {ci(r['clean_ci'])} | {r['mPC']:.3f} {ci(r.get('mPC_ci'))} | "
              f"{r['rPC']:.3f} {ci(r.get('rPC_ci'))} | " + " | ".join(f"{r['per_corruption'][n]:.3f}" for n in names) + " |")


if __name__ == "__main__":
    main()
