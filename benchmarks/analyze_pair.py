"""Two trained runs through ``zir analyze`` and ``zir compare``, in one process (both see the same machine).

Used for the README's raccoon table (faster_rcnn against yolo_v1: which degrades more with distance,
crowding and weather). Train the runs first, e.g. with the bench recipes:

    python benchmarks/detect.py --data raccoon --minutes 8 --models faster_rcnn --peer none --threads 1 --out R1
    python benchmarks/detect.py --data raccoon --minutes 8 --models yolo_v1 --peer none --threads 1 --out R2
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/analyze_pair.py R1/raccoon/runs/faster_rcnn \\
        R2/raccoon/runs/yolo_v1 --quick --corruptions weather --out runs/raccoon-compare

Each run is analysed on its own validation data (the bench runs validate on the raccoon test split).
``--corruptions weather``: the six weather corruptions only (snow, frost, fog, brightness, rain, sun flare);
with ``--quick`` at severity 3, else at 1-5.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import torch

import zir
from zir.augment.corruptions import CORRUPTIONS, QUICK, WEATHER


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--corruptions", default="default", help="default | weather | all | comma list")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--out", default="runs/compare")
    args = p.parse_args()
    torch.set_num_threads(1)
    names = {"default": None, "weather": list(WEATHER), "all": list(CORRUPTIONS), "quick": list(QUICK)}.get(
        args.corruptions, args.corruptions.split(","))
    for run in (args.run_a, args.run_b):
        load, t0 = os.getloadavg()[0], time.time()
        zir.analyze(run, quick=args.quick, bootstrap=args.bootstrap, corruptions=names, progress=False)
        print(f"analysed {run} in {time.time() - t0:.0f} s (load average {load:.1f} before)", flush=True)
    print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, 1 thread, load average now "
          f"{os.getloadavg()[0]:.1f}\n")
    print(zir.compare(Path(args.run_a) / "analysis" / "analysis.json", Path(args.run_b) / "analysis" / "analysis.json",
                      out=args.out))


if __name__ == "__main__":
    main()
