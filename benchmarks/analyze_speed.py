"""How long ``zir analyze`` takes on a ``faster_rcnn`` run with 200 synthetic test images.

Trains Faster R-CNN (the demo's settings: pretrained EfficientNet-Lite0 backbone, 128 px) for
``--minutes`` on 800 synthetic scenes, then times ``zir analyze`` on the 200 validation scenes, ``--quick``
and (with ``--full``) the whole analysis (17 corruptions x 5 severities, 5 zoom factors, 3 NMS values, TIDE).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/analyze_speed.py --minutes 3 [--full] [--out runs/bench-analyze]
                                                                     [--reference OLD/analysis.json]

``--reference``: an earlier ``--quick`` analysis.json of the same run; every number in it must be the same
now (keys added since, such as new intervals, are listed, not compared; ``timing`` is left out).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import zir


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--out", default="runs/bench-analyze")
    ap.add_argument("--reference", default=None, help="an earlier --quick analysis.json of the same run")
    ap.add_argument("--skip-quick", action="store_true", help="with --full: only the full analysis")
    ap.add_argument("--progress", action="store_true", help="the full analysis's steps and bars on stderr")
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = Path(args.out) / "frcnn"
    if not (run / "weights" / "best.safetensors").is_file():
        t = time.time()
        zir.train(model="faster_rcnn", data="synth:detect", synth_n=1000, val_split=0.2, project=args.out,
                  name="frcnn", image_size=128, batch_size=8, epochs=20, lr=3e-4, warmup_epochs=0.3,
                  time_limit=args.minutes, threads=1, model_args={"roi_batch_size": 64, "frozen_blocks": 3},
                  progress=False)
        print(f"trained in {time.time() - t:.0f} s")
    if not args.skip_quick:
        load = os.getloadavg()
        t, cpu = time.time(), time.process_time()
        zir.analyze(run, quick=True, progress=False)
        quick_s, quick_cpu = time.time() - t, time.process_time() - cpu
        numbers = json.loads((run / "analysis" / "analysis.json").read_text())
        # with 1 thread the process's CPU time is what the analysis costs on a free core; the wall time
        # also counts the time other jobs on a shared machine took the core away
        print(f"analyze --quick: {quick_s:.0f} s wall, {quick_cpu:.0f} s CPU on {numbers['images']} images; "
              f"load average before {load[0]:.1f}, after {os.getloadavg()[0]:.1f}")
        print(f"clean {json.dumps(numbers['clean'])} CI {json.dumps(numbers['clean_ci'])}")
        print(f"corruptions (quick) {json.dumps(numbers['corruptions']['all'])}")
        print(f"TIDE AP50 {numbers['tide']['AP']:.4f} "
              f"dAP {json.dumps({k: round(v, 4) for k, v in numbers['tide']['dAP'].items()})}")
        if args.reference:
            old = json.loads(Path(args.reference).read_text())
            changed, added = diff({k: v for k, v in old.items() if k != "timing"},
                                  {k: v for k, v in numbers.items() if k != "timing"})
            print(f"against {args.reference}: {len(changed)} numbers changed {changed[:10]}; keys added: {added}")
    if args.full:
        load, t, cpu = os.getloadavg(), time.time(), time.process_time()
        zir.analyze(run, progress=args.progress)
        print(f"analyze (full): {time.time() - t:.0f} s wall, {time.process_time() - cpu:.0f} s CPU; load average "
              f"before {load[0]:.1f}, after {os.getloadavg()[0]:.1f}")


def diff(old: object, new: object, path: str = "") -> tuple[list[str], list[str]]:
    """(paths whose value differs, paths only in ``new``), recursively over dicts and lists."""
    if isinstance(old, dict) and isinstance(new, dict):
        changed: list[str] = []
        added = [f"{path}/{k}" for k in new if k not in old]
        for k in old:
            c, a = diff(old[k], new.get(k), f"{path}/{k}") if k in new else ([f"{path}/{k} (gone)"], [])
            changed += c
            added += a
        return changed, added
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out: tuple[list[str], list[str]] = ([], [])
        for i, (o, n) in enumerate(zip(old, new)):
            c, a = diff(o, n, f"{path}[{i}]")
            out[0].extend(c)
            out[1].extend(a)
        return out
    return ([] if old == new else [path]), []


if __name__ == "__main__":
    main()
