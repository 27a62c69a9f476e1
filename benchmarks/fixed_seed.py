"""Fixed-seed training of every registry model on tiny synthetic data: the loss of every step, every
epoch's logged row and a fingerprint of the final weights.

A restructure that should not change what is computed must leave this output unchanged::

    python benchmarks/fixed_seed.py --record   # before: writes benchmarks/results/fixed_seed.json
    python benchmarks/fixed_seed.py            # after: compares with it, prints every difference

Bit-identical values are expected on the same machine and torch build; the weights fingerprint ignores
parameter names (a multiset of tensor hashes), so moving a parameter to another module keeps it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

import zir
from zir import models as registry

RESULTS = Path(__file__).parent / "results" / "fixed_seed.json"

# Small settings per model (as tests/models/test_registry.py): seconds per model on one thread.
TINY: dict[str, dict] = {
    "convnet": {"width": 8, "depth": 2},
    "classifier": {"pretrained": "none", "freeze_epochs": 1},
    "efficientnet_lite0": {"pretrained": "none", "transfer": "features"},
    "yolo_v1": {"backbone": "convnet", "width": 8, "S": 4, "hidden": 32, "neck": 32},
    "anchor_free": {"pretrained": "none", "neck_channels": 16, "head_convs": 1, "reg_max": 7},
    "faster_rcnn": {"pretrained": "none", "fpn_channels": 16, "box_hidden": 32},
    "rcnn": {"pretrained": "none", "crop_size": 32, "context": 4, "train_regions": 8, "ss_size": 64},
    "fast_rcnn": {"pretrained": "none", "box_hidden": 32, "ss_size": 64},
    "sliding_window": {"windows": [[16, 16]], "stride": 8, "scales": [1.0, 0.5], "input_size": 16, "level": 2,
                       "width": 8, "hidden": 16},
    "overfeat": {"window": 16, "scales": [1.0, 0.5], "level": 2, "width": 8, "hidden": 16},
    "fcn": {"pretrained": "none"},
    "unet": {"depth": 2, "width": 8},
    "mask_rcnn": {"pretrained": "none", "fpn_channels": 16, "box_hidden": 32, "mask_channels": 16},
    "panoptic_fpn": {"pretrained": "none", "fpn_channels": 16, "box_hidden": 32, "mask_channels": 16,
                     "semantic_channels": 16},
}


def weights_fingerprint(path: Path) -> str:
    """sha256 over the sorted hashes of every tensor's bytes: independent of parameter names."""
    tensors = load_file(str(path))
    digests = sorted(hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest() for t in tensors.values())
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


def run_one(name: str, out: Path) -> dict:
    spec = registry.MODELS[name]
    steps: list[dict[str, float]] = []

    def recording_build(cfg, _build=spec.build):
        model = _build(cfg)
        loss = model.loss

        def recorded(images, targets):
            losses = loss(images, targets)
            steps.append({k: float(v.detach()) for k, v in losses.items()})
            return losses

        model.loss = recorded  # an instance attribute: the class and other models are untouched
        return model

    registry.MODELS[name] = dataclasses.replace(spec, build=recording_build)
    try:
        result = zir.train(model=name, data=f"synth:{spec.task}", model_args=TINY[name], epochs=2, batch_size=4,
                           synth_n=12, val_split=0.25, image_size=64, seed=0, threads=1, device="cpu",
                           project=str(out), name=name, progress=False)
    finally:
        registry.MODELS[name] = spec
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rows]  # wall-clock times differ
    return {"steps": steps, "epochs": rows,
            "weights": weights_fingerprint(result.run_dir / "weights" / "last.safetensors")}


def _same(x: dict) -> str:
    """Canonical text of a result: NaN equals NaN, key order does not matter."""
    return json.dumps(x, sort_keys=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", action="store_true", help=f"write {RESULTS} instead of comparing with it")
    ap.add_argument("--models", nargs="*", default=sorted(registry.MODELS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        got = {}
        for name in args.models:
            got[name] = run_one(name, Path(tmp))
            print(f"{name:16s} steps {len(got[name]['steps']):3d}  weights {got[name]['weights']}", flush=True)
    if args.record:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        RESULTS.write_text(json.dumps({**old, **got}, indent=1, sort_keys=True) + "\n")
        print(f"recorded {RESULTS}")
        return 0
    want = json.loads(RESULTS.read_text())
    differ = 0
    for name, g in got.items():
        w = want.get(name)
        if w is None:
            print(f"{name}: not recorded")
            differ += 1
        elif _same(g) != _same(w):
            differ += 1
            print(f"{name}: DIFFERS")
            for i, (a, b) in enumerate(zip(w["steps"], g["steps"])):
                if a != b:
                    print(f"  first differing step {i}: recorded {a}, now {b}")
                    break
            if len(w["steps"]) != len(g["steps"]):
                print(f"  steps: recorded {len(w['steps'])}, now {len(g['steps'])}")
            if w["epochs"] != g["epochs"]:
                print(f"  epochs: recorded {w['epochs']}\n          now      {g['epochs']}")
            if w["weights"] != g["weights"]:
                print(f"  weights: recorded {w['weights']}, now {g['weights']}")
        else:
            print(f"{name}: identical")
    print(f"{len(got) - differ} of {len(got)} models identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
