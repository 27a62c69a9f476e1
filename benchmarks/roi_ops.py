"""Benchmark: Mask R-CNN's mask branch with RoI Align against RoI pooling, the same budget each.

The lecture (after Mask R-CNN, He et al. 2017, Table 2c: RoIAlign about +3 mask AP over RoIPool) says
RoI pooling's rounding costs the mask branch its pixel accuracy. Here ``mask_rcnn`` is trained twice on
the same synthetic instance scenes (``DEMO_SCENES``, training and validation from different seeds) with
only the mask head's RoI op changed (``model_args.mask_head.roi_op``: ``align`` / ``pool``; the box head
keeps RoI Align, so the difference is the mask branch's alone), each for the same ``time=`` budget
(zir fits the epoch count to it), in one process one after the other so both see the same machine, and
scored with their last weights on the validation scenes: mask AP, AP50, AP75 and box AP.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/roi_ops.py [--minutes 5] [--n 400] [--size 160]
                                                                  [--ops align,pool] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import zir
from zir.data.synth import DEMO_SCENES, SynthConfig, write_synth
from zir.engine import budget

# as benchmarks/segment.py's mask_rcnn: fewer RoIs per image and three frozen backbone blocks (CPU budget)
MASK_RCNN_ARGS = {"roi_batch_size": 128, "frozen_blocks": 3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per RoI op (zir's time=)")
    p.add_argument("--n", type=int, default=400, help="training scenes (validation: n / 4)")
    p.add_argument("--size", type=int, default=160, help="image side")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ops", default="align,pool")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="cpu: time= counts the process's CPU seconds (a shared machine; or one op per process "
                        "with --ops, each on its own core)")
    args = p.parse_args()
    if args.clock == "cpu":
        budget.clock = time.process_time  # the one clock zir's time= reads
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for split, n, seed in (("train", args.n, 0), ("val", args.n // 4, 10_000)):
            cfg = SynthConfig(task="instance", n=n, seed=seed, image_size=args.size, **DEMO_SCENES)
            folders[split] = write_synth(cfg, Path(tmp) / split, progress=False)
        for op in args.ops.split(","):
            load = os.getloadavg()[0]
            t0 = time.time()
            result = zir.train(model="mask_rcnn", model_args={**MASK_RCNN_ARGS, "mask_head": {"roi_op": op}},
                               data=str(folders["train"]), val_path=str(folders["val"]), image_size=args.size,
                               batch_size=4, augment="light", lr=3e-4, warmup_epochs=0.3, time=args.minutes,
                               threads=args.threads, seed=0, project=str(Path(tmp) / "runs"), name=op,
                               progress=False)
            # the last epoch's validation (the last weights): "best" would pick an epoch on the same scenes
            last = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
            m = {k[4:]: v for k, v in last.items() if k.startswith("val/")}
            rows.append({"op": op, "epochs": result.epochs_done, "wall_s": time.time() - t0, "load": load,
                         **{k: m.get(k, float("nan")) for k in ("segm/AP", "segm/AP50", "segm/AP75", "bbox/AP",
                                                                  "bbox/AP50")}})
            print(json.dumps(rows[-1]), flush=True)
    loads = ", ".join(f"{r['load']:.1f}" for r in rows)
    print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {args.threads} thread(s), "
          f"{args.n} training / {args.n // 4} validation scenes of {args.size} px, time={args.minutes:g} min each, "
          f"load average at the start of each run: {loads}\n")
    print("| mask head RoI op | epochs | mask AP | mask AP50 | mask AP75 | box AP | box AP50 | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['op']} | {r['epochs']} | {r['segm/AP']:.3f} | {r['segm/AP50']:.3f} | {r['segm/AP75']:.3f} | "
              f"{r['bbox/AP']:.3f} | {r['bbox/AP50']:.3f} | {r['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
