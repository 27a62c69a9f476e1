"""CUDA check of the engine: every registered model trains one short run on synthetic data on the GPU
with fp16 (gradient scaler) and bf16 autocast, evaluates, and reloads for prediction.

Not a test (CI has no GPU): run it where a GPU is lent and paste its table into the README.

    python benchmarks/gpu_smoke.py [--epochs 1] [--n 256]
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
import traceback

import torch

import zir
from zir.models import MODELS

# Small, quick settings per model (pretrained=imagenet where the model has it: the offline weights).
SETTINGS = {
    "convnet": {"image_size": 64},
    "classifier": {"image_size": 96},
    "efficientnet_lite0": {"image_size": 96, "transfer": "finetune"},
    "yolo_v1": {"image_size": 224},
    "anchor_free": {"image_size": 256},
    "faster_rcnn": {"image_size": 256},
    "mask_rcnn": {"image_size": 256},
    "fcn": {"image_size": 128},
    "unet": {"image_size": 128},
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--n", type=int, default=256)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here")
    print(f"{datetime.date.today()}, {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| model | task | amp | epochs | train s | img/s | monitored metric | reload + predict |")
    print("|---|---|---|---|---|---|---|---|")
    for name, spec in MODELS.items():
        for amp in ("fp16", "bf16"):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    t0 = time.time()
                    r = zir.train(model=name, data=f"synth:{spec.task}", synth_n=args.n, epochs=args.epochs,
                                  batch_size=16, amp=amp, device="cuda", project=tmp, name="g", progress=False,
                                  **SETTINGS.get(name, {}))
                    secs = time.time() - t0
                    rows = (r.run_dir / "metrics.jsonl").read_text().splitlines()
                    import json

                    last = json.loads(rows[-1])
                    metric = {k: v for k, v in r.best_metrics.items() if isinstance(v, float)}
                    key = next(iter(metric), "")
                    pred = zir.load(r.run_dir, device="cuda").predict(torch.rand(3, 100, 140))
                    print(f"| {name} | {spec.task} | {amp} | {args.epochs} | {secs:.1f} | "
                          f"{last['images_per_s']:.0f} | {key} {metric.get(key, float('nan')):.3f} | "
                          f"{type(pred[0]).__name__} |", flush=True)
                except Exception as e:  # noqa: BLE001 - report every model, do not stop at the first
                    print(f"| {name} | {spec.task} | {amp} | FAILED: {type(e).__name__}: {str(e)[:120]} | | | | |")
                    traceback.print_exc()


if __name__ == "__main__":
    main()
