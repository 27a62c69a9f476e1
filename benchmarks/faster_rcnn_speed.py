"""Benchmark: zir's faster_rcnn inference beside torchvision's fasterrcnn_mobilenet_v3_large_320_fpn, on the CPU.

Both models run side by side in one process, on the same images, at batch 1, alternating image by image
so that both see the same load on shared cores. Each resizes inside the model (torchvision: shorter side
320, longer at most 640; zir: longer side ``image_size``) and maps its boxes back to the input's pixels,
so the times include the resize, the whole network and the post-processing.

Inputs: a square 320x320 image (the same working size for both), and the raccoon test images at their
own sizes when the folder exists (there torchvision's 320 model works on more pixels: shorter side 320).
Weights do not change the work except through the number of boxes past the score thresholds: pass
``--run runs/NAME`` to time a trained zir run; torchvision's model is built with ``weights=None,
weights_backbone=None`` (nothing to download) and random heads, which keep all its RPN proposals.

    python benchmarks/faster_rcnn_speed.py [--run runs/NAME] [--image-size 320] [--repeats 20] [--threads 2]

On shared cores the wall time depends on the other jobs (the load average is printed); the CPU time
of the process does much less, and with ``--threads 1`` it is close to an idle machine's wall time.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RACCOON_TEST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "raccoon"


def machine() -> str:
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def zir_model(run: str | None, image_size: int) -> torch.nn.Module:
    if run:
        import zir

        return zir.load(run).model.eval()
    from zir.models import build_model

    return build_model("faster_rcnn", 1, image_size, {"pretrained": "none"}).eval()


def torchvision_model() -> torch.nn.Module:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    return fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=2).eval()


def test_images(limit: int) -> list[torch.Tensor]:
    import csv

    from zir.data.image_io import read_image

    csv_file = RACCOON_TEST / "data" / "test_labels.csv"
    if not csv_file.is_file():
        return []
    names = sorted({row["filename"] for row in csv.DictReader(csv_file.open())})[:limit]
    return [read_image(RACCOON_TEST / "images" / n).float() / 255 for n in names]


def time_models(models: dict[str, Callable[[torch.Tensor], Any]], images: list[torch.Tensor],
                repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per model, (wall ms, process CPU ms) per image; models alternate image by image.

    The CPU time of the process (all its threads) is what the model costs even when other jobs share
    the cores and stretch the wall time; with one thread it is the wall time of an idle machine.
    """
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in models}
    with torch.inference_mode():
        for fn in models.values():  # warm-up: first calls allocate and pick kernels
            for im in images[:3]:
                fn(im)
        for _ in range(repeats):
            for im in images:
                for name, fn in models.items():
                    t, c = time.perf_counter(), time.process_time()
                    fn(im)
                    times[name][0].append((time.perf_counter() - t) * 1000)
                    times[name][1].append((time.process_time() - c) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a trained zir faster_rcnn run (default: random weights)")
    ap.add_argument("--image-size", type=int, default=320, help="zir's working size (longer side)")
    ap.add_argument("--repeats", type=int, default=20, help="passes over the images")
    ap.add_argument("--raccoon-images", type=int, default=10, help="raccoon test images to time (0 = none)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours, theirs = zir_model(args.run, args.image_size), torchvision_model()
    models = {
        "zir faster_rcnn (fp32)": lambda im: ours.predict([im]),
        "zir faster_rcnn (bf16 autocast)": lambda im: _bf16(ours, im),
        "torchvision fasterrcnn_mobilenet_v3_large_320_fpn (fp32)": lambda im: theirs([im]),
    }
    inputs = {"320x320 image": [torch.rand(3, 320, 320) for _ in range(3)]}
    raccoon = test_images(args.raccoon_images)
    if raccoon:
        inputs[f"{len(raccoon)} raccoon test images, own sizes"] = raccoon

    cmd = " ".join(["python", *sys.argv])
    print(f"# Faster R-CNN inference on the CPU, batch 1 ({datetime.date.today()})\n")
    print(f"machine: {machine()}  ")
    print(f"command: `{cmd}`  ")
    print(f"zir: {'weights of ' + args.run if args.run else 'random weights'}, image_size={args.image_size}, "
          f"params {sum(p.numel() for p in ours.parameters()) / 1e6:.1f} M; torchvision: "
          f"params {sum(p.numel() for p in theirs.parameters()) / 1e6:.1f} M\n")
    print(f"load average before: {_load()}  ")
    rows = []
    for label, images in inputs.items():
        times = time_models(models, images, args.repeats if len(images) < 5 else max(1, args.repeats // 4))
        rows += [(label, name, statistics.median(wall), statistics.median(cpu)) for name, (wall, cpu) in times.items()]
    print(f"load average after: {_load()}\n")
    print("| input | model | median wall ms / image | median CPU ms / image |")
    print("|---|---|---:|---:|")
    for label, name, wall, cpu in rows:
        print(f"| {label} | {name} | {wall:.1f} | {cpu:.1f} |")


def _load() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def _bf16(model: torch.nn.Module, im: torch.Tensor):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model.predict([im])


if __name__ == "__main__":
    main()
