"""Benchmark: the small ConvNet on synthetic shapes, within a two-minute CPU budget.

Goal (foundation issue): >= 95% validation accuracy within two minutes of training on a 2-core CPU.
Validation scenes come from another seed than training scenes. Prints a markdown table for the README.

    python benchmarks/convnet_synth.py [--minutes 2] [--n 2000] [--image-size 48] [--amp bf16]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time

import torch

import zir


def budget_settings(args: argparse.Namespace) -> dict:
    """zir's time= (epochs fitted to the budget), or fixed epochs with the budget as the hard stop."""
    return {"time": args.minutes} if args.epochs == 0 else {"epochs": args.epochs, "time_limit": args.minutes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--n", type=int, default=2000, help="training images")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--epochs", type=int, default=0,
                   help="0: fitted to --minutes (zir's time=); N: N epochs, --minutes as the hard stop (time_limit)")
    p.add_argument("--amp", default="bf16", choices=("none", "bf16"))
    p.add_argument("--width", type=int, default=24)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        result = zir.train(model="convnet", data="synth:classify", synth_n=args.n, val_split=0.25,
                           image_size=args.image_size, batch_size=64, lr=4e-3,
                           warmup_epochs=0.5, amp=args.amp, **budget_settings(args), project=tmp, name="bench",
                           model_args={"width": args.width}, progress=False)
        wall = time.time() - t0
        rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train_s = rows[-1]["time_s"]
    best = max(r.get("val/accuracy", 0) for r in rows)
    reached = next((r for r in rows if r.get("val/accuracy", 0) >= 0.95), None)
    print(f"\n{datetime.date.today()}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| model | images | size | amp | epochs | train s | best val acc | time to 95% |")
    print("|---|---|---|---|---|---|---|---|")
    to95 = f"{reached['time_s']:.0f} s (epoch {reached['epoch']})" if reached else "not reached"
    print(f"| convnet w{args.width} | {args.n} | {args.image_size} | {args.amp} | {len(rows)} | {train_s:.0f} "
          f"| {best:.4f} | {to95} |")
    print(f"\n(wall time with data synthesis and report: {wall:.0f} s)")


if __name__ == "__main__":
    main()
