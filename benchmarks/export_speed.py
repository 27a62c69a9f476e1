"""Speed of the exported graphs: ms per image at batch 1 and images/s at batch 8, for PyTorch fp32,
PyTorch bf16 autocast and onnxruntime, on the CPU, every model that has a deployment graph
(``zir.export.graphs``), at its default architecture (random weights: speed does not depend on them) and
one input size (``--backends`` picks some of the three). Each time is the median of ``--repeats`` calls after one warm-up call, pre- and
post-processing included (uint8 images in, results in the input's pixels out, as a caller gets them).

    PYTHONPATH=$PWD python benchmarks/export_speed.py --size 320 --threads 1 [--models yolo_v1,fcn] [--yolov8n]

``--yolov8n`` adds Ultralytics YOLOv8n's own ONNX export at the same input size, built from ``yolov8n.yaml``
(no download: random weights; latency does not depend on them), with Ultralytics' default settings
(``simplify=True``: onnxslim), twice: the plain export (float ``(B, 3, S, S)`` in, raw ``(B, 84, N)`` out: no
resize, no normalisation, no NMS) and ``nms=True`` (NMS in the graph). ``--onnx PATH`` times any other ONNX
file taking float ``(B, 3, S, S)``. ``--set MODEL.KEY=VALUE`` changes a model's setting (e.g.
``anchor_free.head=light``; ``MODEL@LABEL.KEY=VALUE`` adds a second row of the same model, labelled).
``--weights MODEL=RUN`` times a trained model instead (speed after the network depends on the weights: how
many boxes pass the threshold, how many ``refine`` moves); ``--set`` then changes its post-network settings.
Rows are written to ``--out`` after each model, so a run stopped early keeps what it measured.

At the end, every onnxruntime session (zir's graphs and the ONNX files) is timed once more **interleaved**:
``--repeats`` rounds, each calling every session once at batch 1 (then at batch 8), so that a change of the
machine's load reaches all of them alike; the medians are the ``interleaved`` rows, the fair comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from zir.export import to_onnx
from zir.export.graphs import graph_for
from zir.models import build_model

MODELS = {"yolo_v1": {"pretrained": "none"}, "fcn": {"pretrained": "none"}, "unet": {},
          "convnet": {}, "classifier": {"pretrained": "none"}, "anchor_free": {"pretrained": "none"},
          "faster_rcnn": {"pretrained": "none"}, "mask_rcnn": {"pretrained": "none"},
          "panoptic_fpn": {"pretrained": "none", "thing_classes": (True,) * 3 + (False,) * 3},
          "sliding_window": {}, "overfeat": {}, "rcnn": {"pretrained": "none"}, "fast_rcnn": {"pretrained": "none"}}
PROPOSALS = 2000  # per image for the graphs on selective search's boxes (its default max_proposals)
BACKENDS = ("torch_fp32", "torch_bf16", "onnxruntime")
CLASSES = {"panoptic_fpn": 6}  # 3 thing and 3 stuff classes; the others 3 classes


def clock(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, oneDNN primitive caches, onnxruntime's first-run optimisations
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=320, help="input side (square images) and the models' image_size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--yolov8n", action="store_true", help="also time Ultralytics YOLOv8n's own ONNX exports")
    ap.add_argument("--onnx", help="also time this ONNX file (float (B, 3, S, S) input), e.g. YOLOv8n's export")
    ap.add_argument("--set", nargs="*", default=[], metavar="MODEL[@LABEL].KEY=VALUE",
                    help="change a model's setting; with @LABEL, an extra row of that model")
    ap.add_argument("--backends", default=",".join(BACKENDS),
                    help="which of torch_fp32, torch_bf16, onnxruntime to time (sliding_window in PyTorch takes "
                         "minutes per call)")
    ap.add_argument("--batches", default="1,8", type=lambda v: tuple(int(b) for b in v.split(",")),
                    help="batch sizes to time (R-CNN's graph at batch 8 with 2000 proposals per image needs more "
                         "than 24 GB: --batches 1)")
    ap.add_argument("--weights", nargs="*", default=[], metavar="MODEL=RUN",
                    help="trained weights (a zir run or weights file) for MODEL's rows instead of random ones; "
                         "--set then changes only settings that act after the network (e.g. refine, score_thresh)")
    ap.add_argument("--out", default="benchmarks/results/export_speed.json")
    ap.add_argument("--profile", action="store_true",
                    help="only print onnxruntime's ms per operator type at batch 1 (its profiler), no timing table")
    ap.add_argument("--macs", action="store_true",
                    help="only print each model's multiply-adds at --size (whole and per top-level part), no timing")
    args = ap.parse_args()
    backends = args.backends.split(",")
    if not backends or set(backends) - set(BACKENDS):
        raise SystemExit(f"--backends takes some of {', '.join(BACKENDS)}, got {args.backends!r}")
    variants = model_variants(args.models.split(","), args.set)
    if args.profile:
        for label, name, settings in variants:
            model = make_model(name, settings, args)
            with tempfile.TemporaryDirectory() as tmp:
                print(label, op_times(to_onnx(model, Path(tmp) / "m.onnx"), args.size, args.threads, args.repeats))
        return
    if args.macs:
        for label, name, settings in variants:
            print(label, multiply_adds(make_model(name, settings, args), args.size))
        return
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    rows: list[dict] = []
    sessions: dict[str, tuple[Any, str, str]] = {}  # label -> (session, input name, "uint8" | "float")
    onnx_files = [(Path(args.onnx).name, args.onnx)] if args.onnx else []
    with tempfile.TemporaryDirectory() as tmp:
        if args.yolov8n:
            onnx_files += yolov8n_exports(args.size, Path(tmp))
        for label, path in onnx_files:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            sessions[label] = (session, name, "float")
            row = {"model": label, "size": args.size}
            for batch in args.batches:
                x = torch.rand(batch, 3, args.size, args.size).numpy()
                t = clock(lambda: session.run(None, {name: x}), args.repeats)  # noqa: B023
                row[f"onnxruntime_b{batch}"] = round(1000 * t / batch, 1) if batch == 1 else round(batch / t, 1)
            save(args, rows, row)

    for label, name, settings in variants:
        torch.manual_seed(0)
        model = make_model(name, settings, args)
        graph = graph_for(model)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            path = to_onnx(model, Path(tmp) / "m.onnx", graph)
            export_s = time.perf_counter() - start
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        kind = "proposals" if "proposals" in getattr(graph, "inputs", ()) else "uint8"
        sessions[label] = (session, "images", kind)
        row = {"model": label, "size": args.size, "export_s": round(export_s, 1)}
        for batch in args.batches:
            feeds = make_feeds(kind, "images", batch, args.size)
            x = tuple(torch.from_numpy(v) for v in feeds.values())

            def fp32(graph=graph, x=x):
                with torch.no_grad():
                    graph(*x)

            def bf16(graph=graph, x=x):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                    graph(*x)

            def onnx(session=session, feeds=feeds):
                session.run(None, feeds)

            for label, fn in (("torch_fp32", fp32), ("torch_bf16", bf16), ("onnxruntime", onnx)):
                if label not in backends:
                    continue
                t = clock(fn, args.repeats)
                row[f"{label}_b{batch}"] = round(1000 * t / batch, 1) if batch == 1 else round(batch / t, 1)
        save(args, rows, row)
    if len(sessions) > 1:
        for row in interleaved(sessions, args.size, args.repeats, args.batches):
            save(args, rows, row)


def op_times(path: Path, size: int, threads: int, repeats: int) -> dict[str, float]:
    """onnxruntime's own profile of the graph at ``path`` on one uint8 image (:func:`make_feeds`): mean ms per
    call spent in each operator type (the ten largest) over ``repeats`` calls after a warm-up, and ``wall``."""
    import json as json_
    from collections import Counter

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = make_feeds("proposals" if len(session.get_inputs()) > 1 else "uint8", "images", 1, size)
    start = time.perf_counter()
    for _ in range(repeats + 1):
        session.run(None, x)
    wall = (time.perf_counter() - start) / (repeats + 1)
    totals: Counter[str] = Counter()
    for event in json_.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    calls = repeats + 1
    return {"wall": round(1000 * wall, 1), **{op: round(us / calls / 1000, 2) for op, us in totals.most_common(10)}}


def multiply_adds(model: torch.nn.Module, size: int) -> dict[str, float]:
    """G multiply-adds of ``model``'s forward on one ``(1, 3, size, size)`` image: ``total`` and per top-level
    child module (e.g. backbone, neck, head), counted by ``torch.utils.flop_counter`` (a multiply-add is 2 flops)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, size, size))
    counts = counter.get_flop_counts()
    root = type(model).__name__
    out = {"total": round(counter.get_total_flops() / 2e9, 3)}
    for child, _ in model.named_children():
        key = f"{root}.{child}"
        if key in counts:
            out[child] = round(sum(counts[key].values()) / 2e9, 3)
    return out


def make_model(name: str, settings: dict[str, Any], args: argparse.Namespace) -> torch.nn.Module:
    """``name`` at ``--size`` with ``settings`` and random weights, or with ``--weights``' trained ones (its
    config's fields changed by ``settings``), in eval mode."""
    runs = dict(item.partition("=")[::2] for item in args.weights)
    if name not in runs:
        return build_model(name, CLASSES.get(name, 3), args.size, {**MODELS[name], **settings}).eval()
    import dataclasses

    from zir.engine.predictor import find_weights, load

    model = load(find_weights(runs[name], prefer="last")).model
    model.cfg = dataclasses.replace(model.cfg, **settings)
    return model.eval()


def model_variants(models: list[str], settings: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """``[(row label, model name, settings)]``: each model of ``--models`` with its ``--set MODEL.KEY=VALUE``
    settings, plus one row per ``MODEL@LABEL`` named in ``--set`` (the model's settings and the label's)."""
    import yaml

    plain: dict[str, dict[str, Any]] = {m: {} for m in models}
    extra: dict[str, tuple[str, dict[str, Any]]] = {}
    for item in settings:
        target, _, value = item.partition("=")
        who, _, key = target.rpartition(".")
        model, _, label = who.partition("@")
        if not key or not value or model not in MODELS:
            raise SystemExit(f"--set expects MODEL[@LABEL].KEY=VALUE with MODEL one of {', '.join(MODELS)}, got {item!r}")
        if label:
            extra.setdefault(label, (model, {}))[1][key] = yaml.safe_load(value)
        else:
            plain.setdefault(model, {})[key] = yaml.safe_load(value)
    out = [(m + "".join(f" {k}={v}" for k, v in s.items()), m, s) for m, s in plain.items()]
    for label, (model, s) in extra.items():
        out.append((f"{model} {label}", model, {**plain.get(model, {}), **s}))
    return out


def interleaved(sessions: dict[str, tuple[Any, str, str]], size: int, repeats: int,
                batches: tuple[int, ...] = (1, 8)) -> list[dict]:
    """onnxruntime's ms per image at batch 1 and images/s at each larger batch of ``batches`` for every session,
    timed in rounds that call each session once (after one warm-up call each): the same load for all. Rows
    labelled ``interleaved``."""
    times: dict[tuple[str, int], list[float]] = {}
    for batch in batches:
        feeds = {label: make_feeds(kind, name, batch, size) for label, (_, name, kind) in sessions.items()}
        for label, (session, _, _) in sessions.items():
            session.run(None, feeds[label])
        for _ in range(repeats):
            for label, (session, _, _) in sessions.items():
                start = time.perf_counter()
                session.run(None, feeds[label])
                times.setdefault((label, batch), []).append(time.perf_counter() - start)
    return [{"model": label, "size": size, "interleaved": True,
             **{f"onnxruntime_b{b}": round(1000 * statistics.median(times[label, b]), 1) if b == 1
                else round(b / statistics.median(times[label, b]), 1) for b in batches}} for label in sessions]


def make_feeds(kind: str, name: str, batch: int, size: int) -> dict[str, Any]:
    """One call's inputs: ``float`` (B, 3, S, S) in [0, 1] (an outside ONNX file), ``uint8`` images (zir's
    graphs), or ``proposals``: uint8 images and :data:`PROPOSALS` random boxes per image (R-CNN's and Fast
    R-CNN's graphs; selective search itself runs before the graph and is not timed here)."""
    if kind == "float":
        return {name: torch.rand(batch, 3, size, size).numpy()}
    feeds = {name: torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).numpy()}
    if kind == "proposals":
        g = torch.Generator().manual_seed(0)
        xy = torch.rand(batch * PROPOSALS, 2, generator=g) * size * 0.75
        wh = 8 + torch.rand(batch * PROPOSALS, 2, generator=g) * size / 2
        image = torch.arange(batch).repeat_interleave(PROPOSALS)[:, None].float()
        feeds["proposals"] = torch.cat([image, xy, (xy + wh).clamp(max=size)], dim=1).numpy()
    return feeds


def save(args: argparse.Namespace, rows: list[dict], row: dict) -> None:
    """Print a row (with the 1-minute load average at its end) and rewrite the results file with it."""
    row["load_average"] = round(os.getloadavg()[0], 2)
    rows.append(row)
    print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "command": " ".join(sys.argv),
                                          "rows": rows}, indent=1))


def yolov8n_exports(size: int, folder: Path) -> list[tuple[str, Path]]:
    """Ultralytics' own ONNX exports of YOLOv8n (from ``yolov8n.yaml``, random weights) at ``size``: the
    plain one and ``nms=True``, dynamic batch; ``[(label, path)]``."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    out = []
    for label, nms in (("yolov8n (ultralytics onnx, no NMS)", False), ("yolov8n (ultralytics onnx, nms=True)", True)):
        cwd = os.getcwd()
        os.chdir(folder)  # ultralytics writes the file beside the model's yaml name, in the working folder
        try:
            path = YOLO("yolov8n.yaml").export(format="onnx", imgsz=size, dynamic=True, nms=nms)
        finally:
            os.chdir(cwd)
        target = folder / f"yolov8n_nms{int(nms)}.onnx"
        Path(folder / path).rename(target)
        out.append((label, target))
    return out


if __name__ == "__main__":
    main()
