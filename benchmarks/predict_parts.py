"""Where ``predict``'s time goes, part by part, for anchor_free and Faster R-CNN on the raccoon test photos.

Each part of ``predict`` is timed on its own, in the order ``predict`` runs them, through the folded copy
``predict`` uses (``zir.models.inference``), one photo at a time at its own size, 1 thread, the two models
taking turns photo by photo; the table has the median ms of each part over ``--rounds`` passes (the first
photo of the first pass left out) and the median of the whole ``predict`` called right after:

    anchor_free: resize (and normalise, pad) | backbone | neck | head | decode | NMS | refiner
    faster_rcnn: resize (and normalise, pad) | backbone | FPN | RPN | RoI heads | to pixels

The resize and the backbone are the same work in both (EfficientNet-Lite0 at 320 px), which is what bounds
the one-stage detector's time as a fraction of the two-stage one's.

    PYTHONPATH=$PWD python benchmarks/predict_parts.py --raccoon ../shared/data/raccoon [--runs anchor_free=RUN]
                                                       [--set anchor_free.head_convs=1 ...]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detect import RACCOON, bench_model, own_size_images, prepare_raccoon  # noqa: E402

from zir.analysis import bench  # noqa: E402
from zir.models.detect.anchor_free import postprocess  # noqa: E402
from zir.models.detect.transform import to_input_pixels  # noqa: E402
from zir.models.inference import channels_last  # noqa: E402
from zir.ops.assign import anchor_points  # noqa: E402
from zir.ops.boxes import clip  # noqa: E402
from zir.ops.coder import decode_ltrb, dfl_expectation  # noqa: E402


def shared_parts(model, net, image: torch.Tensor, clock) -> tuple[torch.Tensor, list, list[torch.Tensor]]:
    """The parts both detectors run alike: the resize into the working frame and the backbone, each under
    ``clock(name)`` -> ``(batch, working sizes, backbone maps)``."""
    with clock("resize"):
        x, work = model.prepare([image])
    with clock("backbone"):
        return x, work, net.backbone(channels_last(x))


def anchor_free_parts(model, image: torch.Tensor, clock) -> None:
    """anchor_free's ``predict`` on one image, each part under ``clock(name)``."""
    net = model.inference_net()
    x, work, f = shared_parts(model, net, image, clock)
    with clock("neck"):
        p = net.neck(f)
    with clock("head"):
        cls, box = net.head(p)
    with clock("decode"):
        points, strides = anchor_points([tuple(q.shape[-2:]) for q in p], model.neck.strides, device=x.device)
        scores, boxes = cls.float().sigmoid(), decode_ltrb(points, dfl_expectation(box.float()), strides)
    with clock("NMS"):
        c = model.cfg
        found = [postprocess(s, clip(b, w), c.score_thresh, c.nms_iou, c.pre_nms_top_n, c.max_detections, c.box_voting)
                 for s, b, w in zip(scores, boxes, work)]
    if model.refiner is not None and c.refine:
        with clock("refiner"):
            net.refiner.refine(p[0], [b[: c.refine] for b, _, _ in found])


def faster_rcnn_parts(model, image: torch.Tensor, clock) -> None:
    """Faster R-CNN's ``predict`` on one image, each part under ``clock(name)``."""
    net = model.inference_net()
    _, work, f = shared_parts(model, net, image, clock)
    with clock("FPN"):
        features = net.fpn(f)
    with clock("RPN"):
        proposals = model.rpn(features, work).proposals
    with clock("RoI heads"):
        detections = model.roi_heads.detect(features, proposals, work)
    with clock("to pixels"):
        [to_input_pixels(d.boxes, d.scores, d.labels, w, tuple(image.shape[-2:])) for d, w in zip(detections, work)]


class Clock:
    """``with clock(name):`` adds the block's seconds to ``times[name]``."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = defaultdict(list)
        self.name = ""

    def __call__(self, name: str) -> Clock:
        self.name = name
        return self

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.times[self.name].append(time.perf_counter() - self.start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raccoon", type=Path, default=RACCOON)
    ap.add_argument("--runs", nargs="*", default=[], metavar="NAME=RUN", help="trained weights (else untrained)")
    ap.add_argument("--set", nargs="*", default=[], metavar="MODEL.KEY=VALUE",
                    help="a setting of an untrained model's recipe (as detect.py --latency)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-detect"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = prepare_raccoon(args.raccoon.resolve(), args.out / "raccoon" / "data")
    runs = {k: Path(v) for k, v in (item.split("=", 1) for item in args.runs)}
    overrides = bench.parse_sets(args.set)
    models = {name: (bench_model(name, data, runs, overrides), parts)
              for name, parts in (("anchor_free", anchor_free_parts), ("faster_rcnn", faster_rcnn_parts))}
    clocks = {name: Clock() for name in models}
    images = [image for image, in own_size_images(data)]
    with torch.no_grad():
        for r in range(args.rounds):
            for i, image in enumerate(images):
                for name, (model, parts) in models.items():
                    clock = clocks[name] if (r, i) != (0, 0) else Clock()  # the first photo warms up
                    parts(model, image, clock)
                    with clock("predict"):
                        model.predict([image])
    for name, clock in clocks.items():
        weights = "trained" if name in runs else "untrained"
        ms = {k: 1000 * statistics.median(v) for k, v in clock.times.items()}
        parts = " | ".join(f"{k} {v:.1f}" for k, v in ms.items() if k != "predict")
        print(f"| {name} ({weights}) | {parts} | sum {sum(v for k, v in ms.items() if k != 'predict'):.1f} "
              f"| predict {ms['predict']:.1f} |")


if __name__ == "__main__":
    main()
