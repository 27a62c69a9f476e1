"""zir's TIDE split against the ``tidecv`` package (v1.0.1) on the same predictions, and both APs against
pycocotools.

The predictions are made from synthetic ground truth with known errors of every kind (jittered boxes,
swapped classes, duplicates, boxes on background, missed objects) and random scores, so no trained model
is needed. Two cases: every class has objects, and one class of the category list has none (where tidecv's
users report an AP that differs from pycocotools'). Needs ``pip install tidecv pycocotools``.

    PYTHONPATH=$PWD python benchmarks/tide_check.py [--images 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

import torch

from zir.analysis.tide import KINDS, tide
from zir.data.contract import DetectionPrediction, Target
from zir.data.synth import SynthDataset
from zir.metrics.coco import CocoEvaluator

TIDECV_NAMES = {"cls": "Cls", "loc": "Loc", "both": "Both", "dupe": "Dupe", "bkg": "Bkg", "miss": "Miss"}


def noisy_predictions(targets: list[Target], num_classes: int, g: torch.Generator) -> list[DetectionPrediction]:
    """Per object: found (jittered a little), badly boxed, wrong class, duplicated or missed; plus boxes on
    background; scores uniform."""
    preds = []
    for t in targets:
        rows, labels = [], []
        H, W = t.size
        for box, label in zip(t.boxes, t.labels.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            u = float(torch.rand((), generator=g))
            if u < 0.15:
                continue  # missed
            shift = 0.05 if u < 0.7 else 0.35  # found, or badly boxed
            jitter = (torch.rand(4, generator=g) * 2 - 1) * shift * torch.stack([w, h, w, h])
            rows.append(box + jitter)
            labels.append(label if u < 0.85 else (label + 1) % num_classes)
            if float(torch.rand((), generator=g)) < 0.2:  # a duplicate
                rows.append(box + (torch.rand(4, generator=g) * 2 - 1) * 0.05 * torch.stack([w, h, w, h]))
                labels.append(label)
        for _ in range(int(torch.randint(0, 3, (), generator=g))):  # background
            x, y = float(torch.rand((), generator=g)) * (W - 10), float(torch.rand((), generator=g)) * (H - 10)
            rows.append(torch.tensor([x, y, x + 10, y + 10]))
            labels.append(int(torch.randint(0, num_classes, (), generator=g)))
        boxes = torch.stack(rows).float() if rows else torch.zeros(0, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
        scores = torch.rand(len(boxes), generator=g)
        order = scores.argsort(descending=True)
        preds.append(DetectionPrediction(boxes[order], scores[order], torch.tensor(labels, dtype=torch.long)[order]))
    return preds


def run_tidecv(ev: CocoEvaluator, folder: Path) -> tuple[float, dict[str, float]]:
    from tidecv import TIDE, datasets

    gt = ev.ground_truth()
    for image in gt["images"]:
        image["file_name"] = f"{image['id']}.png"  # tidecv reads it (zir's evaluator needs none)
    for a in gt["annotations"]:  # tidecv reads a segmentation even in box mode: the box as a polygon
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    (folder / "gt.json").write_text(json.dumps(gt))
    (folder / "res.json").write_text(json.dumps(ev.results()))
    t = TIDE()
    with contextlib.redirect_stdout(io.StringIO()):
        t.evaluate(datasets.COCO(str(folder / "gt.json")), datasets.COCOResult(str(folder / "res.json")),
                   mode=TIDE.BOX, name="run")
    run = t.runs["run"]
    errors = t.get_main_errors()["run"]
    return run.ap / 100, {k: errors[v] / 100 for k, v in TIDECV_NAMES.items()}


def case(title: str, targets: list[Target], classes: list[str], g: torch.Generator) -> None:
    preds = noisy_predictions(targets, len(classes), g)
    ev = CocoEvaluator(classes)
    ev.update(preds, targets)
    coco_ap50 = ev.compute()["bbox/AP50"]
    ours = tide(preds, targets, lambda: CocoEvaluator(classes))
    with tempfile.TemporaryDirectory() as d:
        try:
            theirs_ap, theirs = run_tidecv(ev, Path(d))
        except Exception as e:  # report the package's failure as it is
            theirs_ap, theirs = float("nan"), {k: float("nan") for k in KINDS}
            print(f"tidecv failed: {type(e).__name__}: {e}")
    print(f"\n### {title}\n\n{len(targets)} images, {sum(len(t.boxes) for t in targets)} objects, "
          f"{sum(len(p.boxes) for p in preds)} detections, classes {classes}\n")
    print("| | AP50 | " + " | ".join(f"dAP {k}" for k in KINDS) + " |")
    print("|---|---|" + "---|" * len(KINDS))
    print(f"| pycocotools (zir's evaluator) | {coco_ap50:.4f} |" + " |" * len(KINDS))
    print(f"| zir | {ours['AP']:.4f} | " + " | ".join(f"{ours['dAP'][k]:.4f}" for k in KINDS) + " |")
    print(f"| tidecv | {theirs_ap:.4f} | " + " | ".join(f"{theirs[k]:.4f}" for k in KINDS) + " |")
    print("\nerror counts (zir): " + ", ".join(f"{k} {v}" for k, v in ours["counts"].items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    ds = SynthDataset("detect", n=args.images, seed=args.seed, image_size=128)
    targets = [Target.from_sample(ds[i], (128, 128)) for i in range(args.images)]
    g = torch.Generator().manual_seed(args.seed)
    case("every class has objects", targets, list(ds.classes), g)
    # one more category that no object has: tidecv's users report its AP then differs from pycocotools'
    case("the category list has an unused class", targets, [*ds.classes, "unused"], g)


if __name__ == "__main__":
    main()
