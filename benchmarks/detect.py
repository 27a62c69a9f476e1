"""Benchmark: every zir detector (registry task ``detect``) beside Ultralytics YOLOv8n, same time budget.

A thin wrapper of ``zir bench detectors`` (``zir/analysis/bench/``: budgeted training, scoring, table,
chart) that adds what is not zir's business:

  * ``raccoon``: ``../shared/data/raccoon`` with its own split (``data/train_labels.csv``: 160 images,
    173 boxes for training; ``data/test_labels.csv``: 40 images, 44 boxes for testing). The VOC XMLs
    give the boxes; the split is written as two COCO files (zir's VOC reader and COCO writer).
  * ``synth``: zir's synthetic shapes (``zir.analysis.bench.prepare_synth``), training and test scenes
    from different seeds.
  * the peer: Ultralytics YOLOv8n trains from ``yolov8n.yaml`` (no pretrained weights offline) with
    Ultralytics' own ``time=`` budget, on the same data written by zir's YOLO writer, and is scored like
    the zir models (one test image at a time at its original size; COCO mAP through zir's faster-coco-eval
    evaluator on the same ground-truth file). It is one more point (one-stage, hollow) and row.

Each data set gets ``OUT/<data>/table.md``, ``results.json`` and ``chart.png``; the tables are printed.

    python benchmarks/detect.py [--data raccoon,synth] [--minutes 15] [--models all|none|yolo_v1,...]
                                [--peer yolov8n|none] [--set yolo_v1.lr=1e-3 ...] [--threads 1]

``--latency`` trains nothing: it times ``predict`` at batch 1 on the test images of the first data set,
the models taking turns image by image (so a change of the machine's load reaches all of them), with
the recipes' settings (and ``--set``'s) and untrained weights, or trained ones given by ``--runs NAME=RUN``
(a zir run or weights file; ``yolov8n=last.pt`` adds the peer). Every model whose ``predict`` runs a folded copy
(``zir.models.inference``: BatchNorms folded, channels-last; anchor_free, faster_rcnn, yolo_v1) is timed
twice: as it predicts and through its own layers (``NAME (unfolded)``), the before/after.

    python benchmarks/detect.py --latency --models anchor_free,faster_rcnn [--runs anchor_free=RUN ...]
                                [--scores anchor_free=0.937/0.572 ...]

``--scores NAME=MAP50/MAP50_95`` draws ``OUT/<data>/latency_chart.png``: those accuracies (from training
runs measured before, e.g. the README's tables) against the ms just timed, one point per model.

``--clock cpu`` makes ``--minutes`` the process's CPU minutes (``time.process_time``) for zir's ``time=``
and for Ultralytics' ``time=``: on a shared machine under load, a 1-thread run then gets the same work
as on quiet cores (what the budget means), however long it takes on the wall.

Needs ``pip install ultralytics`` (benchmarks/requirements.txt) for the peer.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import os
import shlex
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from zir.analysis import bench
from zir.analysis.bench import BenchData, BenchRow
from zir.data.contract import DetectionPrediction
from zir.data.formats.coco import write_coco_json
from zir.data.formats.voc import read_voc
from zir.engine import budget

RACCOON = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "raccoon"
PEER_NAME = "YOLOv8n (Ultralytics, peer)"


def prepare_raccoon(root: Path, out: Path) -> BenchData:
    """COCO train/test files of the raccoon set's own split (images stay where they are)."""
    index = read_voc(root)
    split = {name: {row["filename"] for row in csv.DictReader((root / "data" / f"{name}_labels.csv").open())}
             for name in ("train", "test")}
    files = {}
    for name, stems in split.items():
        records = [r for r in index.records if r.path.name in stems]
        if len(records) != len(stems):
            sys.exit(f"{root}: {len(stems) - len(records)} images of {name}_labels.csv have no annotation")
        # File names relative to the JSON's folder, so zir's COCO reader finds the images where they are.
        files[name] = write_coco_json(records, index.classes, out / f"raccoon_{name}.json", out)
    return bench.from_coco(files["train"], files["test"], "raccoon", kind="photo")


def run_yolov8n(data: BenchData, minutes: float, work: Path, image_size: int) -> BenchRow:
    """Ultralytics YOLOv8n from scratch (yolov8n.yaml) in the same budget, scored like the zir models."""
    threads = torch.get_num_threads()  # Ultralytics drops to one thread on a 2-core machine: restore it
    os.environ["YOLO_OFFLINE"] = "1"
    from ultralytics import YOLO

    from zir.data.formats import open_dataset
    from zir.data.formats.yolo import write_yolo

    torch.set_num_threads(threads)
    if budget.clock is time.process_time:  # --clock cpu: Ultralytics' time= (time.time) counts CPU seconds too
        import ultralytics.engine.trainer as ultralytics_trainer

        ultralytics_trainer.time = types.SimpleNamespace(**{**vars(time), "time": time.process_time})
    root = work / "yolo_data"
    shutil.rmtree(root, ignore_errors=True)
    write_yolo(open_dataset(data.train), root, split="train")
    data_yaml = write_yolo(open_dataset(data.test), root, split="val", overwrite=True)
    spec = yaml.safe_load(Path(data_yaml).read_text())
    spec.update(train="images/train", val="images/val")
    Path(data_yaml).write_text(yaml.safe_dump(spec))

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_train_start", lambda trainer: torch.set_num_threads(threads))
    model.add_callback("on_train_epoch_start", lambda trainer: torch.set_num_threads(threads))
    t0 = time.time()
    model.train(data=str(data_yaml), epochs=1000, time=minutes / 60, imgsz=image_size, batch=16, device="cpu",
                workers=0, plots=False, pretrained=False, amp=False, project=str(work), name="v8n",
                exist_ok=True, verbose=False, val=False, seed=0)
    train_s = time.time() - t0
    torch.set_num_threads(threads)
    weights = Path(model.trainer.save_dir) / "weights" / "last.pt"
    net = YOLO(str(weights))

    def predict(images: list[torch.Tensor]) -> list[DetectionPrediction]:
        out = []
        for image in images:  # float (3, H, W) in [0, 1] at its own size, as every zir model gets it
            # (H, W, 3) uint8 BGR, what Ultralytics takes for an array (x / 255 * 255 rounds back exactly;
            # this conversion is timed with the prediction)
            bgr = np.ascontiguousarray((image * 255).round().byte().permute(1, 2, 0).cpu().numpy()[..., ::-1])
            r = net.predict(bgr, imgsz=image_size, conf=0.001, iou=0.6, max_det=100, device="cpu",
                            verbose=False)[0].boxes
            out.append(DetectionPrediction(boxes=r.xyxy.float(), scores=r.conf.float(), labels=r.cls.long()))
        return out

    m = bench.score(predict, data, work)
    return BenchRow(name=PEER_NAME, model="", stages=1, mAP50=m["mAP50"], mAP50_95=m["mAP50-95"], ms=m["ms"],
                    train_min=train_s / 60, epochs=model.trainer.epoch + 1, source="peer", run=str(weights),
                    settings={"imgsz": image_size, "batch": 16, "time_h": round(minutes / 60, 4)})


def bench_model(name: str, data: BenchData, runs: dict[str, Path], overrides: dict[str, dict[str, Any]] | None = None):
    """``name`` as the latency benchmarks time it, in eval mode: ``runs[name]``'s trained weights (``--set``
    reaching only the settings in ``anchor_free.AFTER_NETWORK``, e.g. ``refine=0``), or the recipe's untrained
    network with ``--set``'s settings."""
    from zir.engine.predictor import find_weights, load
    from zir.models import build_model
    from zir.models.detect.anchor_free import AFTER_NETWORK

    if name in runs:
        model = load(find_weights(runs[name], prefer="last")).model
        after = {k: v for k, v in (overrides or {}).get(name, {}).items() if k in AFTER_NETWORK}
        model.cfg = dataclasses.replace(model.cfg, **after) if after else model.cfg
        return model.eval()
    cfg = bench.recipe_for(name, data.kind, (overrides or {}).get(name)).config()
    return build_model(name, len(data.classes), cfg.data.image_size, dict(cfg.model_args)).eval()


def own_size_images(data: BenchData) -> list[list[torch.Tensor]]:
    """The test split's images one by one at their own sizes, each as a one-image list (``predict``'s input)."""
    from zir.analysis.bench.scoring import own_size_loader
    from zir.models.detect.transform import unpad

    return [unpad(b.images, [t.size for t in b.targets]) for b in own_size_loader(data)]


def latency(data: BenchData, models: list[str], runs: dict[str, Path], image_size: int,
            overrides: dict[str, dict[str, Any]] | None = None, rounds: int = 2) -> dict[str, tuple[str, float]]:
    """Median ms of ``predict`` per test image at batch 1, the models taking turns image by image:
    ``{label: ("trained" | "untrained", ms)}``; ``rounds`` passes over the test images (the first call of each
    model left out);
    ``overrides``: ``--set``'s settings of the untrained models' recipes (of trained ones: those in
    ``anchor_free.AFTER_NETWORK``, e.g. ``refine=0``: the same weights without the second stage)."""
    predictors: dict[str, bench.Clock] = {}
    for name in models:
        model = bench_model(name, data, runs, overrides)
        predictors[name] = bench.Clock(model.predict)
        if hasattr(model, "inference_net"):  # the same weights through the model's own layers (no folding)
            unfolded = copy.deepcopy(model)
            unfolded.inference_net = lambda: None
            predictors[f"{name} (unfolded)"] = bench.Clock(unfolded.predict)
    if "yolov8n" in runs:
        os.environ["YOLO_OFFLINE"] = "1"
        from ultralytics import YOLO

        net = YOLO(str(runs["yolov8n"]))
        predictors[PEER_NAME] = bench.Clock(lambda images: [net.predict(
            np.ascontiguousarray((im * 255).round().byte().permute(1, 2, 0).numpy()[..., ::-1]), imgsz=image_size,
            conf=0.001, iou=0.6, max_det=100, device="cpu", verbose=False) for im in images])
    images = own_size_images(data)
    with torch.no_grad():
        for _ in range(rounds):
            for image in images:
                for clock in predictors.values():
                    clock(image)
    return {name: ("trained" if name.split(" ")[0] in runs or name == PEER_NAME else "untrained", clock.ms())
            for name, clock in predictors.items()}


def latency_table(times: dict[str, tuple[str, float]]) -> str:
    """:func:`latency`'s times as a markdown table."""
    lines = ["| model | weights | ms / image (median, batch 1) |", "|---|---|---:|"]
    lines += [f"| {name} | {weights} | {ms:.1f} |" for name, (weights, ms) in times.items()]
    return "\n".join(lines) + "\n"


def latency_chart(times: dict[str, tuple[str, float]], scores: list[str], title: str, path: Path) -> None:
    """The accuracy-against-speed chart (``zir.analysis.bench.build_chart``) from ``--scores``'
    ``NAME=MAP50/MAP50_95`` (accuracy measured elsewhere, e.g. the README's tables) and the ms just timed."""
    from zir.models import MODELS

    rows = []
    for item in scores:
        name, _, values = item.partition("=")
        if name not in times or values.count("/") != 1:
            raise SystemExit(f"--scores takes NAME=MAP50/MAP50_95 for a timed model ({', '.join(times)}), got {item!r}")
        m50, m5095 = (float(v) for v in values.split("/"))
        model = name.split(" ")[0]
        stages = 1 if name == PEER_NAME else MODELS[model].stages if model in MODELS else 0
        rows.append(BenchRow(name=name, model=model, stages=stages, mAP50=m50, mAP50_95=m5095, ms=times[name][1],
                             source="peer" if name == PEER_NAME else "run"))
    fig = bench.build_chart(rows, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"Chart: `{path}`")


# --------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="raccoon,synth", help="comma list: raccoon, synth")
    p.add_argument("--minutes", type=float, default=15.0, help="training budget per model and data set")
    p.add_argument("--models", default="all", help="zir detectors (registry task detect): comma list, all or none")
    p.add_argument("--peer", default="yolov8n", choices=("yolov8n", "none"))
    p.add_argument("--peer-size", type=int, default=320, help="YOLOv8n image size")
    p.add_argument("--set", nargs="*", default=[], metavar="MODEL.KEY=VALUE", help="override a setting")
    p.add_argument("--threads", type=int, default=2, help="torch threads for every model (2 = this CPU's cores)")
    p.add_argument("--raccoon", type=Path, default=RACCOON)
    p.add_argument("--out", type=Path, default=Path("runs/bench-detect"), help="one folder per data set in here")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="what --minutes counts: wall-clock time, or the process's CPU time (1 thread: load-independent)")
    p.add_argument("--latency", action="store_true", help="only time predict at batch 1 (no training)")
    p.add_argument("--runs", nargs="*", default=[], metavar="NAME=RUN", help="with --latency: trained weights")
    p.add_argument("--scores", nargs="*", default=[], metavar="NAME=MAP50/MAP50_95",
                   help="with --latency: draw OUT/<data>/latency_chart.png, these accuracies against the ms timed")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        budget.clock = time.process_time
    if args.latency:
        name = args.data.split(",")[0]
        out = args.out / name
        data = prepare_raccoon(args.raccoon.resolve(), out / "data") if name == "raccoon" \
            else bench.prepare_synth(out / "data")
        models = bench.detectors() if args.models == "all" else \
            [m for m in args.models.split(",") if m not in ("", "none")]
        runs = {k: Path(v) for k, v in (item.split("=", 1) for item in args.runs)}
        times = latency(data, models, runs, args.peer_size, bench.parse_sets(args.set))
        print(f"{name}, {args.threads} threads, load {os.getloadavg()[0]:.1f}\n\n" + latency_table(times))
        if args.scores:
            latency_chart(times, args.scores, f"{name}: accuracy against speed (batch 1, {args.threads} thread(s), "
                          f"{time.strftime('%Y-%m-%d')})", out / "latency_chart.png")
        return

    names = [m for m in args.models.split(",") if m not in ("", "none")]
    models = bench.detectors() if args.models == "all" else names
    overrides = bench.parse_sets(args.set)
    command = "python benchmarks/detect.py " + shlex.join(sys.argv[1:])
    tables = []
    for name in args.data.split(","):
        out = args.out / name
        data = prepare_raccoon(args.raccoon.resolve(), out / "data") if name == "raccoon" \
            else bench.prepare_synth(out / "data")
        rows: list[BenchRow] = []
        baseline: dict[str, Any] = {}
        failed: dict[str, str] = {}
        if models:
            result = bench.bench_detectors(data, out, models=models, minutes=args.minutes, overrides=overrides,
                                           threads=args.threads, device="cpu", command=command)
            rows, baseline, failed = result.rows, result.baseline, result.failed
        else:
            baseline = bench.mean_box_baseline(data, out)
        if args.peer == "yolov8n":
            print(f"{name}: training YOLOv8n for {args.minutes} min", flush=True)
            rows.append(run_yolov8n(data, args.minutes, out / "peer", args.peer_size))
            print(f"{name}: {PEER_NAME}: mAP50 {rows[-1].mAP50:.3f}, mAP50-95 {rows[-1].mAP50_95:.3f}, "
                  f"{rows[-1].ms:.1f} ms/image", flush=True)
        table, _, chart = bench.write_outputs(rows, data, out, command=command, threads=args.threads, device="cpu",
                                              minutes=args.minutes, baseline=baseline, failed=failed)
        tables.append(table.read_text() + f"\nChart: `{chart}`\n")
    print("\n" + "\n".join(tables))


if __name__ == "__main__":
    main()
