"""Sliced inference (SAHI) on small objects in large images: the recall and AP50 it gains over one
whole-image pass and what it costs, for zir's ``predict_sliced`` and for the ``sahi`` package wrapping
the same trained model, in one process on the same images.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/sliced.py --minutes 8 [--test-scenes 3] [--clock cpu]

1. Synthetic 2000x2000 scenes (zir's synthetic textures and shapes, ``zir.data.synth``) with 60 objects of
   8-20 px each, four classes (circle, square, triangle, star).
2. A detector (``anchor_free``, pretrained EfficientNet-Lite0) trained for ``--minutes`` on random
   ``--tile`` px crops of other such scenes, so it sees the objects at the scale the tiles show them.
3. On held-out scenes: the whole image resized to the detector's input (8-20 px objects become 1-3 px),
   zir's sliced prediction (``--tile`` px tiles, overlap 0.2, the whole-image pass too, greedy NMM over
   IoS 0.5: sahi's defaults), and ``sahi.predict.get_sliced_prediction`` with the same settings over a
   ``sahi.models.base.DetectionModel`` that calls the same zir model (batched as zir batches tiles;
   ``force_postprocess_type``: sahi otherwise switches to NMS over IoU below a 0.1 score threshold).
   Recall at IoU 0.5 of detections scoring >= ``--conf`` (and of all that are kept, >= 0.05), COCO AP50 (faster-coco-eval, as ``zir eval``),
   seconds per image, and how many of zir's boxes sahi also returns (IoU >= 0.9, same class); and zir's
   sliced prediction through the exported ONNX graph (``--no-onnx`` leaves it out).

Needs ``pip install -r benchmarks/requirements.txt`` (sahi). sahi requires ``opencv-python``, whose ``cv2``
hides the ``opencv-contrib-python-headless`` build zir's selective search needs: ``make bench`` reinstalls
the contrib build afterwards; by hand, ``pip install --no-deps sahi shapely fire termcolor requests``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from zir.data.contract import DetectionPrediction, Record
from zir.data.formats.coco import write_coco_json
from zir.data.image_io import save_png
from zir.data.synth import CLASSES, SHAPES, _pick_colour, _texture
from zir.engine.sliced import Slicing, predict_sliced
from zir.metrics.coco import CocoEvaluator
from zir.ops.boxes import iou

SIDE = 2000


def make_scene(seed: int, n_objects: int = 60, side: int = SIDE, sizes: tuple[float, float] = (8, 20)):
    """A ``side`` px textured scene with ``n_objects`` shapes of ``sizes`` px diameter, none touching.

    Returns ``(image uint8 (H, W, 3), boxes float32 (N, 4) XYXY, labels int64 (N,))``.
    """
    rng = np.random.default_rng([seed, 2000])
    canvas = _texture(rng, side)
    boxes, labels, centres = [], [], []
    while len(boxes) < n_objects:
        d = float(np.exp(rng.uniform(math.log(sizes[0]), math.log(sizes[1]))))
        r = d / 2
        pad = int(math.ceil(r)) + 2
        cx, cy = rng.uniform(pad + 1, side - pad - 2, 2)  # the local canvas below stays inside the image
        if any((cx - x) ** 2 + (cy - y) ** 2 < (r + s + 4) ** 2 for x, y, s in centres):
            continue
        label = int(rng.integers(0, len(CLASSES)))
        # Drawn on a small local canvas: the mask gives the exact box of the visible shape.
        x0, y0 = int(cx) - pad, int(cy) - pad
        local = Image.new("L", (2 * pad + 1, 2 * pad + 1), 0)
        SHAPES[CLASSES[label]](ImageDraw.Draw(local), cx - x0, cy - y0, r, rng.uniform(0, 2 * math.pi))
        mask = np.asarray(local, dtype=bool)
        if not mask.any():
            continue
        full = np.zeros((side, side), bool)
        full[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] = mask
        canvas[full] = _pick_colour(rng, canvas, full)
        ys, xs = np.nonzero(mask)
        boxes.append([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1])
        labels.append(label)
        centres.append((cx, cy, r))
    canvas += 6.0 * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, np.asarray(boxes, np.float32), np.asarray(labels, np.int64)


def write_training_crops(out: Path, scenes: int, crops: int, tile: int, seed: int) -> Path:
    """``crops`` random ``tile`` px crops of each of ``scenes`` scenes, as a COCO dataset. Objects cut by the
    crop's edge are kept if at least 60 % of their box is inside (clipped), else dropped."""
    if (out / "annotations.json").is_file():
        return out
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for s in range(scenes):
        image, boxes, labels = make_scene(1000 + s)
        for c in range(crops):
            x, y = (int(v) for v in rng.integers(0, SIDE - tile, 2))
            clipped = np.clip(boxes - [x, y, x, y], 0, tile)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            kept = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1]) >= 0.6 * area
            path = out / "images" / f"{s:03d}_{c:03d}.png"
            save_png(image[y:y + tile, x:x + tile], path)
            records.append(Record(path=path, image_id=len(records) + 1, width=tile, height=tile,
                                  boxes=clipped[kept].astype(np.float32), labels=labels[kept],
                                  iscrowd=np.zeros(int(kept.sum()), bool)))
    write_coco_json(records, CLASSES, out / "annotations.json", out / "images")
    return out


def sahi_model(predictor, conf: float):
    """sahi's custom-model interface over a zir predictor: tiles arrive as RGB ``(h, w, 3)`` arrays."""
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction

    class ZirDetectionModel(DetectionModel):
        def load_model(self):
            self.model = predictor

        def set_model(self, model, **kwargs):
            self.model = model

        def perform_inference(self, image):
            self.perform_batch_inference([image])

        def perform_batch_inference(self, images):
            tensors = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images]
            self._original_predictions = self.model.predict(tensors, batch_size=len(tensors))

        def _create_object_prediction_list_from_original_predictions(self, shift_amount_list=None,
                                                                     full_shape_list=None):
            if shift_amount_list and isinstance(shift_amount_list[0], (int, float)):
                shift_amount_list = [shift_amount_list]  # one image: [x, y], as sahi's own models accept
            if full_shape_list and isinstance(full_shape_list[0], (int, float)):
                full_shape_list = [full_shape_list]
            per_image = []
            for k, pred in enumerate(self._original_predictions):
                keep = pred.scores > self.confidence_threshold
                per_image.append([
                    ObjectPrediction(bbox=b, category_id=int(lab), category_name=CLASSES[int(lab)], score=float(s),
                                     shift_amount=shift_amount_list[k] if shift_amount_list else [0, 0],
                                     full_shape=full_shape_list[k] if full_shape_list else None)
                    for b, s, lab in zip(pred.boxes[keep].tolist(), pred.scores[keep].tolist(),
                                         pred.labels[keep].tolist())])
            self._object_prediction_list_per_image = per_image

    return ZirDetectionModel(model=predictor, confidence_threshold=conf, device="cpu",
                             category_mapping={str(i): c for i, c in enumerate(CLASSES)})


def from_sahi(result) -> DetectionPrediction:
    objs = result.object_prediction_list
    if not objs:
        return DetectionPrediction(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    boxes = torch.tensor([o.bbox.to_xyxy() for o in objs], dtype=torch.float32)
    scores = torch.tensor([o.score.value for o in objs], dtype=torch.float32)
    labels = torch.tensor([o.category.id for o in objs], dtype=torch.int64)
    order = scores.argsort(descending=True)
    return DetectionPrediction(boxes[order], scores[order], labels[order])


def recall(pred: DetectionPrediction, boxes: torch.Tensor, labels: torch.Tensor, conf: float) -> tuple[int, int]:
    """Objects found (IoU >= 0.5, same class, each detection used once, best score first) of all."""
    pred = pred.above(conf)
    used = torch.zeros(len(boxes), dtype=torch.bool)
    if len(pred.boxes):
        overlap = iou(pred.boxes, boxes)  # (D, G)
        for d in range(len(pred.boxes)):
            ok = (overlap[d] >= 0.5) & ~used & (labels == pred.labels[d])
            if ok.any():
                used[int(torch.where(ok, overlap[d], -1).argmax())] = True
    return int(used.sum()), len(boxes)


def agreement(a: DetectionPrediction, b: DetectionPrediction, conf: float) -> float:
    """Fraction of ``a``'s detections (score >= conf) with a box of ``b`` at IoU >= 0.9 and the same class."""
    a, b = a.above(conf), b.above(conf)
    if not len(a.boxes):
        return float("nan")
    if not len(b.boxes):
        return 0.0
    same = (iou(a.boxes, b.boxes) >= 0.9) & (a.labels[:, None] == b.labels[None, :])
    return float(same.any(1).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=8, help="training budget (time=)")
    ap.add_argument("--train-scenes", type=int, default=12)
    ap.add_argument("--crops", type=int, default=50, help="training crops per scene")
    ap.add_argument("--test-scenes", type=int, default=3)
    ap.add_argument("--tile", type=int, default=256, help="training crop side = slice side = model input")
    ap.add_argument("--conf", type=float, default=0.3, help="score threshold of the recall and agreement")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/sliced-bench")
    ap.add_argument("--run", help="a trained run to reuse instead of training one")
    ap.add_argument("--json", default="benchmarks/results/sliced.json")
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                    help="what --minutes counts: wall-clock time, or the process's CPU time (1 thread: load-independent)")
    ap.add_argument("--no-onnx", dest="onnx", action="store_false",
                    help="leave out the row of zir's sliced prediction through the exported ONNX graph")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        from zir.engine import budget

        budget.clock = time.process_time
    from sahi.predict import get_sliced_prediction

    import zir

    out = Path(args.out)
    t0 = time.time()
    data = write_training_crops(out / "crops", args.train_scenes, args.crops, args.tile, seed=0)
    print(f"training crops: {args.train_scenes * args.crops} in {time.time() - t0:.0f} s", flush=True)
    run = args.run
    if run is None:
        result = zir.train(model="anchor_free", data=str(data), project=str(out), name="detector",
                           image_size=args.tile, batch_size=8, lr=1e-3, weight_decay=5e-4, warmup_epochs=0.5,
                           augment="light", time=args.minutes, threads=args.threads, exist_ok=True,
                           channels_last=True,  # as the photo recipe (NHWC weights: cheaper steps on this CPU)
                           model_args={"score_thresh": 0.001}, progress=False)
        run = result.run_dir
        print(f"trained {result.epochs_done} epochs; validation (crops) {result.best_metrics}", flush=True)
    predictor = zir.load(run)
    slicing = Slicing(size=args.tile, overlap=0.2, full=True, merge="nmm", metric="ios", threshold=0.5,
                      conf=0.05, batch_size=8)
    wrapped = sahi_model(predictor, conf=slicing.conf)
    methods = ["whole image", "zir sliced", "sahi sliced", "zir sliced, no whole pass"]
    if args.onnx:  # the same slicing over the exported graph (zir predict --backend onnx --slice)
        from zir.export import export
        from zir.export.runtime import OnnxPredictor

        start = time.time()
        onnx = OnnxPredictor(export(run, "onnx"), threads=args.threads)
        print(f"exported to ONNX in {time.time() - start:.0f} s", flush=True)
        methods.append("zir sliced, onnx backend")
    evals = {m: CocoEvaluator(CLASSES) for m in methods}
    found = {m: [0, 0] for m in methods}
    found_all = {m: 0 for m in methods}
    seconds = {m: 0.0 for m in methods}
    agree = []
    for k in range(args.test_scenes):
        image, boxes, labels = make_scene(5000 + k)
        tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()  # (3, H, W) uint8
        gt_boxes, gt_labels = torch.from_numpy(boxes), torch.from_numpy(labels)
        target = {"boxes": gt_boxes, "labels": gt_labels, "image_id": k + 1, "size": (SIDE, SIDE)}
        preds = {}
        for m in methods:
            start = time.perf_counter()
            with torch.inference_mode():
                if m == "whole image":
                    preds[m] = predictor.predict(tensor)[0]
                elif m == "zir sliced":
                    preds[m] = predict_sliced(predictor, tensor, slicing)
                elif m == "zir sliced, onnx backend":
                    preds[m] = predict_sliced(onnx, tensor, slicing)
                elif m == "zir sliced, no whole pass":
                    preds[m] = predict_sliced(predictor, tensor, Slicing(**{**slicing.__dict__, "full": False}))
                else:
                    preds[m] = from_sahi(get_sliced_prediction(
                        image, wrapped, slice_height=args.tile, slice_width=args.tile, overlap_height_ratio=0.2,
                        overlap_width_ratio=0.2, perform_standard_pred=True, postprocess_type="GREEDYNMM",
                        postprocess_match_metric="IOS", postprocess_match_threshold=0.5, verbose=0,
                        batch_size=slicing.batch_size, force_postprocess_type=True))
            seconds[m] += time.perf_counter() - start
            evals[m].update([preds[m]], [target])
            f, n = recall(preds[m], gt_boxes, gt_labels, args.conf)
            found[m][0] += f
            found[m][1] += n
            found_all[m] += recall(preds[m], gt_boxes, gt_labels, slicing.conf)[0]
        agree.append((agreement(preds["zir sliced"], preds["sahi sliced"], args.conf),
                      agreement(preds["sahi sliced"], preds["zir sliced"], args.conf)))
        print(f"scene {k}: " + ", ".join(f"{m} {len(preds[m].above(args.conf).boxes)} boxes" for m in methods),
              flush=True)
    rows = {}
    for m in methods:
        metrics = evals[m].compute()
        rows[m] = {"recall": found[m][0] / found[m][1], "recall_all": found_all[m] / found[m][1],"AP50": metrics["bbox/AP50"], "AP": metrics["bbox/AP"],
                   "s_per_image": seconds[m] / args.test_scenes}
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": os.getloadavg(),
              "threads": args.threads, "tile": args.tile, "test_scenes": args.test_scenes, "conf": args.conf,
              "objects_per_scene": 60, "object_px": [8, 20], "run": str(run), "minutes": args.minutes,
              "clock": args.clock,
              "rows": rows, "zir_boxes_in_sahi": float(np.nanmean([a for a, _ in agree])),
              "sahi_boxes_in_zir": float(np.nanmean([b for _, b in agree]))}
    print(f"{'method':28s} {'recall':>7s} {'recall@.05':>10s} {'AP50':>6s} {'AP':>6s} {'s/image':>8s}")
    for m, r in rows.items():
        print(f"{m:28s} {r['recall']:7.3f} {r['recall_all']:10.3f} {r['AP50']:6.3f} {r['AP']:6.3f} "
              f"{r['s_per_image']:8.2f}")
    print(f"zir boxes also in sahi's: {report['zir_boxes_in_sahi']:.3f}, sahi's in zir's: "
          f"{report['sahi_boxes_in_zir']:.3f}; load {report['load']}")
    Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
