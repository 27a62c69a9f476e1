"""Speed of the exported graphs: ms per image at batch 1 and images/s at batch 8, for PyTorch fp32,
PyTorch bf16 autocast and onnxruntime, on the CPU, every model that has a deployment graph
(``zir.export.graphs``), at its default architecture (random weights: speed does not depend on them) and
one input size. Each time is the median of ``--repeats`` calls after one warm-up call, pre- and
post-processing included (uint8 images in, results in the input's pixels out, as a caller gets them).

    PYTHONPATH=$PWD python benchmarks/export_speed.py --size 320 --threads 1 [--models yolo_v1,fcn]

Ultralytics YOLOv8n's own ONNX export, the issue's reference, needs its weights downloaded (not possible
offline here): run ``yolo export model=yolov8n.pt format=onnx imgsz=320`` where it can be, and time it
with ``--onnx PATH`` (a graph taking float ``(B, 3, S, S)``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from zir.export import to_onnx
from zir.export.graphs import graph_for
from zir.models import build_model

MODELS = {"yolo_v1": {"pretrained": "none"}, "fcn": {"pretrained": "none"}, "unet": {},
          "convnet": {}, "classifier": {"pretrained": "none"}}


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
    ap.add_argument("--onnx", help="also time this ONNX file (float (B, 3, S, S) input), e.g. YOLOv8n's export")
    ap.add_argument("--out", default="benchmarks/results/export_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = build_model(name, 3, args.size, MODELS[name]).eval()
        graph = graph_for(model)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            path = to_onnx(model, Path(tmp) / "m.onnx", graph)
            export_s = time.perf_counter() - start
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        row = {"model": name, "size": args.size, "export_s": round(export_s, 1)}
        for batch in (1, 8):
            x = torch.randint(0, 256, (batch, 3, args.size, args.size), dtype=torch.uint8)

            def fp32(graph=graph, x=x):
                with torch.no_grad():
                    graph(x)

            def bf16(graph=graph, x=x):
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                    graph(x)

            def onnx(session=session, x=x):
                session.run(None, {"images": x.numpy()})

            for label, fn in (("torch_fp32", fp32), ("torch_bf16", bf16), ("onnxruntime", onnx)):
                t = clock(fn, args.repeats)
                row[f"{label}_b{batch}"] = round(1000 * t / batch, 1) if batch == 1 else round(batch / t, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.onnx:
        session = ort.InferenceSession(args.onnx, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        row = {"model": Path(args.onnx).name, "size": args.size}
        for batch in (1, 8):
            x = torch.rand(batch, 3, args.size, args.size).numpy()
            t = clock(lambda: session.run(None, {name: x}), args.repeats)  # noqa: B023
            row[f"onnxruntime_b{batch}"] = round(1000 * t / batch, 1) if batch == 1 else round(batch / t, 1)
        rows.append(row)
        print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "load_average": os.getloadavg()[0],
                                          "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
