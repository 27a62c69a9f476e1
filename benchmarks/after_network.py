"""Benchmark: anchor_free's settings that act after the network (box voting, box refinement), paired on the
same trained weights.

``box_voting`` changes only what happens after NMS, ``refine`` only which boxes the trained refiner moves
and ``refine_score`` how much its predicted IoU counts in their scores (``AnchorFreeConfig``), so one
trained run can be scored with each value: the difference between two
columns of a row is the setting's effect alone, free of the seed-to-seed spread of training (2-3 points of
mAP50-95 on raccoon).

Each RUN is a ``benchmarks/detect.py --out`` folder that trained ``anchor_free`` on raccoon
(``RUN/raccoon/data/raccoon_{train,test}.json`` and ``RUN/raccoon/runs/anchor_free``); it is scored with its
last weights, one test image at a time, by the bench's evaluator (``zir.analysis.bench.score``).

    python benchmarks/after_network.py RUN [RUN ...] --vary box_voting=0,1,3 [--threads 1]
    python benchmarks/after_network.py RUN [RUN ...] --vary refine=0,10          # runs trained with refine > 0
    python benchmarks/after_network.py RUN [RUN ...] --vary refine_score=0,0.5,1
    python benchmarks/after_network.py RUN [RUN ...] --vary pre_nms_top_n=1000,300   # candidates into NMS

Prints a markdown table of mAP50 / mAP50-95 (``--ap75``: mAP50 / AP75 / mAP50-95) per run and value, and the mean change of mAP50-95 from the
first value.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch

from zir.analysis.bench import from_coco, score
from zir.engine.predictor import find_weights, load
from zir.models.detect.anchor_free import AFTER_NETWORK, AnchorFreeConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="benchmarks/detect.py --out folders")
    p.add_argument("--vary", required=True, help=f"KEY=V1,V2,...; KEY one of {', '.join(AFTER_NETWORK)}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ap75", action="store_true", help="cells mAP50 / AP75 / mAP50-95 (AP at IoU 0.75 alone)")
    args = p.parse_args()
    key, _, values = args.vary.partition("=")
    if key not in AFTER_NETWORK or not values:
        p.error(f"--vary takes KEY=V1,V2,... with KEY one of {', '.join(AFTER_NETWORK)}, got {args.vary!r}")
    kind = type(getattr(AnchorFreeConfig(), key))  # int (refine, pre_nms_top_n) or float
    values = [kind(v) for v in values.split(",")]
    torch.set_num_threads(args.threads)
    lines = [f"| run | {' | '.join(f'{key}={v:g}' for v in values)} |", "|---|" + "---:|" * len(values)]
    changes: dict[float, list[float]] = {v: [] for v in values}
    for run in args.runs:
        d = run / "raccoon" / "data"
        data = from_coco(d / "raccoon_train.json", d / "raccoon_test.json", "raccoon", kind="photo")
        predictor = load(find_weights(run / "raccoon" / "runs" / "anchor_free", prefer="last"))
        trained = predictor.model.cfg
        if key.startswith("refine") and predictor.model.refiner is None:
            p.error(f"{run}: trained without refine, so it has no refiner to vary")
        cells, first = [], None
        for v in values:
            predictor.model.cfg = dataclasses.replace(trained, **{key: v})
            with tempfile.TemporaryDirectory() as work:
                m = score(predictor.model.predict, data, work, progress=False, metrics=True)
            first = m["bbox/AP"] if first is None else first
            changes[v].append(m["bbox/AP"] - first)
            cells.append(" / ".join(f"{m[f'bbox/{k}']:.3f}" for k in (("AP50", "AP75", "AP") if args.ap75 else
                                                                         ("AP50", "AP"))))
        lines.append(f"| {run.name} | " + " | ".join(cells) + " |")
    lines.append("| mean change of mAP50-95 from the first column | "
                 + " | ".join(f"{100 * sum(c) / len(c):+.2f} points" for c in changes.values()) + " |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
