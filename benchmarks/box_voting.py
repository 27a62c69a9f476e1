"""Benchmark: anchor_free's box voting against plain NMS, paired on the same trained weights.

Box voting only changes what happens after the network (``AnchorFreeConfig.box_voting``), so one trained
run can be scored with each setting: the difference between two columns of a row is the setting's effect
alone, free of the seed-to-seed spread of training (2-3 points of mAP50-95 on raccoon).

Each RUN is a ``benchmarks/detect.py --out`` folder that trained ``anchor_free`` on raccoon
(``RUN/raccoon/data/raccoon_{train,test}.json`` and ``RUN/raccoon/runs/anchor_free``); it is scored with its
last weights, one test image at a time, by the bench's evaluator (``zir.analysis.bench.score``).

    python benchmarks/box_voting.py RUN [RUN ...] [--powers 0 1 2 3 4] [--threads 1]

Prints a markdown table of mAP50 / mAP50-95 per run and power (0: plain NMS) and the mean change of
mAP50-95 from plain NMS.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch

from zir.analysis.bench import from_coco, score
from zir.engine.predictor import find_weights, load


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="benchmarks/detect.py --out folders")
    p.add_argument("--powers", nargs="+", type=float, default=[0.0, 1.0, 2.0, 3.0, 4.0])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    head = " | ".join("NMS" if q == 0 else f"voting {q:g}" for q in args.powers)
    lines = [f"| run | {head} |", "|---|" + "---:|" * len(args.powers)]
    changes: dict[float, list[float]] = {q: [] for q in args.powers}
    for run in args.runs:
        d = run / "raccoon" / "data"
        data = from_coco(d / "raccoon_train.json", d / "raccoon_test.json", "raccoon", kind="photo")
        predictor = load(find_weights(run / "raccoon" / "runs" / "anchor_free", prefer="last"))
        trained = predictor.model.cfg
        cells, plain = [], None
        for q in args.powers:
            predictor.model.cfg = dataclasses.replace(trained, box_voting=q)
            with tempfile.TemporaryDirectory() as work:
                m = score(predictor.model.predict, data, work, progress=False)
            plain = m["mAP50-95"] if plain is None else plain
            changes[q].append(m["mAP50-95"] - plain)
            cells.append(f"{m['mAP50']:.3f} / {m['mAP50-95']:.3f}")
        lines.append(f"| {run.name} | " + " | ".join(cells) + " |")
    lines.append("| mean change of mAP50-95 from the first column | "
                 + " | ".join(f"{100 * sum(c) / len(c):+.2f} points" for c in changes.values()) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
