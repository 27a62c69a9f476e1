"""Transfer learning on small data: scratch vs features vs finetune, each without and with augmentation.

The lecture's claim, measured: on a few hundred images, starting from ImageNet weights beats training
the same network from random weights by a wide margin, a frozen feature extractor trains in seconds,
and augmentation helps the networks that see the images each epoch. Every run is EfficientNet-Lite0
(``model=efficientnet_lite0``) with the same settings except ``transfer`` and ``data.augment``:

* ``scratch``: random weights, one learning rate;
* ``features``: frozen ImageNet backbone, run once over the data; only the linear head trains on the
  cached features (augmentation does not apply: the features are computed once, see
  ``zir/engine/features.py``, so there is one ``features`` row per dataset); its epochs cost
  milliseconds, so it gets ``--feature-epochs`` (50) instead of ``--epochs``;
* ``finetune``: ImageNet weights, all layers, the backbone at 0.1 x the head's learning rate.

Datasets:

* ``synth``: zir's synthetic shapes (``data=synth:classify``), ``--synth-n`` training images, half as many
  validation images from other seeds (``val_split``);
* ``raccoon-crops`` (with ``--raccoon DIR``, the raccoon dataset: VOC-like ``data/train_labels.csv`` and
  ``data/test_labels.csv`` + ``images/``): a two-class photo set built from it into a temporary folder:
  each raccoon box (with a 10% margin) is a ``raccoon`` image, and a square crop of the same photo that
  hardly overlaps any raccoon (at most 10% of the crop) is a ``background`` image; the training photos
  give the training set, the test photos the validation set, so no photo is in both;
* ``--data PATH``: any ImageFolder (``PATH/<class>/*.jpg``; ``--val-data`` or a 20% split).

Columns: best validation accuracy over the epochs, error reduction against ``scratch`` without
augmentation, ``(E_old - E_new) / E_old``, the training loop's seconds (``time_s`` of the last epoch)
and the whole run's wall seconds (model build, feature cache, training, evaluation, report). The
time to 95% is the training loop's, so for ``features`` it leaves out the one pass of the backbone.

``--side-by-side`` instead runs zir's *default command* per mode (only data, size, ``time=`` and threads
given) beside a plain timm + torchvision reference recipe (:func:`timm_reference`) on real photo sets:
``--clothing`` (``clothing_small``: validation for the table, test scored once) and ``--raccoon-hard``
(:func:`build_raccoon_hard`, raccoon crops against background crops of the same framing)::

    .venv/bin/python benchmarks/classify_transfer.py --side-by-side --clothing ../shared/data/clothing_small
        --raccoon-hard ../shared/data/raccoon --photo-size 224 --minutes 5 --threads 1 [--clock cpu]

``--clock cpu`` makes ``time=`` (through ``zir.engine.budget.clock``, the one clock it reads) and the timm
loop count the process's CPU seconds: on a shared machine each recipe then gets the work of its minutes
on a free core. ``--zir-extra KEY=VALUE,...`` adds a zir row with more settings (``mode=features`` for a
features row); ``--no-zir-default`` and ``--no-timm`` leave rows out; ``--other-tta`` adds, under each zir
row, its trained weights evaluated with flip TTA switched the other way (``tta=1`` <-> ``tta=2``).

    .venv/bin/python benchmarks/classify_transfer.py [--raccoon /path/to/raccoon] [--data PATH]
        [--synth-n 200] [--image-size 64] [--epochs 8] [--feature-epochs 50] [--amp bf16]
        [--augment none,standard] [--modes scratch,features,finetune] [--threads 1]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml
from PIL import Image

import zir
from zir.engine import budget as budget_clock
from zir.metrics.classification import error_reduction

MODES = ("scratch", "features", "finetune")


def raccoon_boxes(raccoon: Path, csv_name: str) -> dict[str, list[tuple[int, int, int, int]]]:
    """The raccoon set's boxes per image file, from its CSV (xmin, ymin, xmax, ymax in pixels)."""
    boxes: dict[str, list[tuple[int, int, int, int]]] = defaultdict(list)
    with open(raccoon / "data" / csv_name) as f:
        for row in csv.DictReader(f):
            boxes[row["filename"]].append(tuple(int(row[k]) for k in ("xmin", "ymin", "xmax", "ymax")))
    return boxes


def raccoon_photos(raccoon: Path, out: Path):
    """Every raccoon photo, train photos for ``train`` and test photos for ``val``: yields
    ``(split, file name, RGB image, its boxes)``, after making ``out/SPLIT/{raccoon,background}``."""
    for split, csv_name in (("train", "train_labels.csv"), ("val", "test_labels.csv")):
        boxes = raccoon_boxes(raccoon, csv_name)
        for cls in ("raccoon", "background"):
            (out / split / cls).mkdir(parents=True, exist_ok=True)
        for name in sorted(boxes):
            yield split, name, Image.open(raccoon / "images" / name).convert("RGB"), boxes[name]


def build_raccoon_crops(raccoon: Path, out: Path, seed: int = 0) -> dict[str, dict[str, int]]:
    """Write ``out/{train,val}/{raccoon,background}/*.jpg``; returns the image count per split and class."""
    rng = random.Random(seed)
    counts = {split: {"raccoon": 0, "background": 0} for split in ("train", "val")}
    for split, name, image, boxes in raccoon_photos(raccoon, out):
        W, H = image.size
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            mx, my = round(0.1 * (x2 - x1)), round(0.1 * (y2 - y1))
            crop = image.crop((max(0, x1 - mx), max(0, y1 - my), min(W, x2 + mx), min(H, y2 + my)))
            crop.save(out / split / "raccoon" / f"{Path(name).stem}_{k}.jpg", quality=95)
            counts[split]["raccoon"] += 1
        for _ in range(200):  # one background square per photo, where one fits
            s = round(rng.uniform(0.25, 0.5) * min(W, H))
            x, y = rng.randint(0, W - s), rng.randint(0, H - s)
            covered = sum(max(0, min(x + s, b[2]) - max(x, b[0])) * max(0, min(y + s, b[3]) - max(y, b[1]))
                          for b in boxes)
            if covered <= 0.1 * s * s:
                image.crop((x, y, x + s, y + s)).save(out / split / "background" / f"{Path(name).stem}.jpg",
                                                      quality=95)
                counts[split]["background"] += 1
                break
    return counts


# --------------------------------------------------------------------------------------------------
# Side by side: zir's default commands against a plain timm + torchvision reference, same budget


def build_raccoon_hard(raccoon: Path, out: Path, seed: int = 0) -> dict[str, dict[str, int]]:
    """A harder two-class crop task than :func:`build_raccoon_crops`: each raccoon box at a random scale
    (1.0-1.6 x the box, so some crops show more surroundings), against background crops of the *same*
    photo with the size and aspect of a raccoon box at 0.6-1.4 x (so both classes have the same framing,
    scale and scenery; at most 10 % of a background crop covers a raccoon), two per box where they fit.
    Train photos give ``train``, test photos ``val``. Returns the image count per split and class."""
    rng = random.Random(seed)
    counts = {split: {"raccoon": 0, "background": 0} for split in ("train", "val")}
    for split, name, image, boxes in raccoon_photos(raccoon, out):
        W, H = image.size
        for k, (x1, y1, x2, y2) in enumerate(boxes):
            s = rng.uniform(1.0, 1.6)
            cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * s, (y2 - y1) * s
            image.crop((max(0, round(cx - w / 2)), max(0, round(cy - h / 2)), min(W, round(cx + w / 2)),
                        min(H, round(cy + h / 2)))).save(out / split / "raccoon" / f"{Path(name).stem}_{k}.jpg",
                                                        quality=95)
            counts[split]["raccoon"] += 1
            made = 0
            for _ in range(300):
                if made == 2:
                    break
                s = rng.uniform(0.6, 1.4)
                w, h = min(W, round((x2 - x1) * s)), min(H, round((y2 - y1) * s))
                x, y = rng.randint(0, W - w), rng.randint(0, H - h)
                covered = sum(max(0, min(x + w, b[2]) - max(x, b[0])) * max(0, min(y + h, b[3]) - max(y, b[1]))
                              for b in boxes)
                if covered <= 0.1 * w * h and w >= 32 and h >= 32:
                    image.crop((x, y, x + w, y + h)).save(
                        out / split / "background" / f"{Path(name).stem}_{k}_{made}.jpg", quality=95)
                    counts[split]["background"] += 1
                    made += 1
    return counts


def zir_default(mode: str, data: dict, minutes: float, size: int, threads: int, project: str,
                extra: dict | None = None, other_tta: bool = False) -> dict:
    """zir's default command for ``transfer=mode`` (the README's): only the data, size, budget and threads
    are given (and ``extra`` settings, to measure a candidate default); ``test`` is scored once at the end
    by ``zir.evaluate``; with ``other_tta`` the trained weights are also evaluated with the other flip-TTA
    setting (``zir.evaluate(run, tta=...)``: the same model, so only the test-time views differ)."""
    t0, c0 = time.time(), budget_clock.clock()
    budget = {"time": minutes} if mode == "finetune" else {}
    tag = "-".join(f"{k}{v}" for k, v in (extra or {}).items())
    result = zir.train(model="efficientnet_lite0", transfer=mode, data=data["train"], val_path=data["val"],
                       image_size=size, threads=threads, project=project, name=f"{data['name']}-{mode}{tag}",
                       progress=False, **budget, **(extra or {}))
    wall = time.time() - t0
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    out = {"val": rows[-1].get("val/accuracy", float("nan")), "epochs": len(rows), "wall_s": wall,
           "clock_s": budget_clock.clock() - c0, "l2": rows[-1].get("train/l2")}
    if data.get("test"):
        out["test"] = zir.evaluate(result.run_dir, data=data["test"], progress=False)["accuracy"]
    if other_tta:  # the same weights with flip TTA switched the other way (1 <-> 2)
        tta = 3 - zir.load(result.run_dir).model.cfg.tta
        out["other_tta"] = {"tta": tta, "val": zir.evaluate(result.run_dir, data=data["val"], progress=False,
                                                            tta=tta)["accuracy"]}
        if data.get("test"):
            out["other_tta"]["test"] = zir.evaluate(result.run_dir, data=data["test"], progress=False,
                                                    tta=tta)["accuracy"]
    return out


def timm_reference(mode: str, data: dict, minutes: float, size: int, threads: int) -> dict:
    """The plain recipe of issue 17, written with timm + torchvision only (zir gives just the weights
    file, so both sides start from the same ImageNet weights): RandomResizedCrop(size) + flip for
    training, resize to size * 256/224 then centre crop for evaluation; ``finetune``: AdamW 1e-3 head /
    1e-4 body (weight decay 0.05, constant), batch 32, epochs until the budget (checked every step);
    ``features``: the frozen backbone's pooled features, scikit-learn's L-BFGS logistic regression (C=1)."""
    import timm
    from torchvision import datasets, transforms

    from zir.models.backbones import offline_state_dict

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    t0, c0 = time.time(), budget_clock.clock()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    evaluate_tf = transforms.Compose([transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size),
                                      transforms.ToTensor(), transforms.Normalize(mean, std)])
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), transforms.Normalize(mean, std)])
    splits = {s: data[s] for s in ("train", "val", "test") if data.get(s)}
    classes = datasets.ImageFolder(splits["train"]).classes
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=len(classes))
    weights = {k: v for k, v in offline_state_dict("efficientnet_lite0").items() if not k.startswith("classifier.")}
    model.load_state_dict(weights, strict=False)

    def loader(split: str, tf, shuffle: bool = False):
        return torch.utils.data.DataLoader(datasets.ImageFolder(splits[split], tf), batch_size=32, shuffle=shuffle)

    @torch.no_grad()
    def accuracy(split: str) -> float:
        model.eval()
        hits = n = 0
        for x, y in loader(split, evaluate_tf):
            hits += int((model(x).argmax(1) == y).sum())
            n += len(y)
        return hits / n

    epochs = 0
    if mode == "features":
        from sklearn.linear_model import LogisticRegression

        model.eval()

        @torch.no_grad()
        def pooled(split: str):
            xs, ys = zip(*[(model.forward_head(model.forward_features(x), pre_logits=True), y)
                           for x, y in loader(split, evaluate_tf)])
            return torch.cat(xs).numpy(), torch.cat(ys).numpy()

        X, y = pooled("train")
        probe = LogisticRegression(max_iter=5000).fit(X, y)
        out = {s: float((probe.predict(pooled(s)[0]) == pooled(s)[1]).mean()) for s in splits if s != "train"}
    else:
        head = list(model.get_classifier().parameters())
        body = [p for p in model.parameters() if all(p is not h for h in head)]
        opt = torch.optim.AdamW([{"params": head, "lr": 1e-3}, {"params": body, "lr": 1e-4}], weight_decay=0.05)
        out_of_time, steps, train_loader = False, 0, loader("train", train_tf, shuffle=True)
        while not out_of_time:
            model.train()
            for x, y in train_loader:
                if budget_clock.clock() - c0 >= minutes * 60:  # the clock zir's time= uses
                    out_of_time = True
                    break
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
        epochs = round(steps / len(train_loader), 1)  # epochs done, the last one possibly in part
        out = {s: accuracy(s) for s in splits if s != "train"}
    return {**out, "epochs": epochs, "wall_s": time.time() - t0, "clock_s": budget_clock.clock() - c0}


def side_by_side(datasets: list[dict], args: argparse.Namespace, project: str) -> None:
    """Print one table per data set: zir's default command beside the timm reference, per mode."""
    for data in datasets:
        print(f"\n**{data['desc']}**, EfficientNet-Lite0 (the same offline ImageNet weights), {args.photo_size} px, "
              f"{args.threads} thread(s); fine-tune budget {args.minutes:g} min each\n")
        print(f"| recipe | mode | epochs | val acc | test acc | {args.clock} s | wall s |")
        print("|---|---|---|---|---|---|---|")
        extras = [dict(item.split("=", 1) for item in e.split(",")) for e in args.zir_extra]
        for mode in args.modes.split(","):
            rows = [("zir", {})] if args.zir_default else []
            rows += [("zir", {k: v for k, v in e.items() if k != "mode"}) for e in extras
                     if e.get("mode", "finetune") == mode]  # mode=features in an extra: a features row
            rows += [("timm", {})] if args.timm else []
            for who, extra in rows:
                if who == "zir":
                    extra = {k: yaml.safe_load(v) for k, v in extra.items()}
                    r = zir_default(mode, data, args.minutes, args.photo_size, args.threads, project, extra,
                                    args.other_tta)
                    name = f"zir `transfer={mode}" + (f" time={args.minutes:g}" if mode == "finetune" else "")
                    name += "".join(f" {k}={v}" for k, v in extra.items()) + "`"
                    if r.get("l2") is not None:
                        name += f" (CV chose L2 {r['l2']:.3g})"
                else:
                    r = timm_reference(mode, data, args.minutes, args.photo_size, args.threads)
                    name = "timm reference"
                test = f"{r['test']:.4f}" if "test" in r else "-"
                print(f"| {name} | {mode} | {r['epochs']} | {r['val']:.4f} | {test} | {r['clock_s']:.0f} | "
                      f"{r['wall_s']:.0f} |", flush=True)
                if "other_tta" in r:
                    o = r["other_tta"]
                    test = f"{o['test']:.4f}" if "test" in o else "-"
                    print(f"| the same weights with `tta={o['tta']}` | {mode} | - | {o['val']:.4f} | {test} | - | - |",
                          flush=True)


def run(data: dict, mode: str, augment: str, args: argparse.Namespace, project: str) -> dict:
    t0 = time.time()
    epochs = args.feature_epochs if mode == "features" else args.epochs
    result = zir.train(model="efficientnet_lite0", transfer=mode, augment=augment, epochs=epochs,
                       lr=args.lr, batch_size=32, warmup_epochs=0.5, amp=args.amp, threads=args.threads, project=project,
                       name=f"{data['name']}-{mode}-{augment}", progress=False, **data["settings"])
    wall = time.time() - t0
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    reached = next((r for r in rows if r.get("val/accuracy", 0) >= 0.95), None)
    return {"accuracy": max(r.get("val/accuracy", 0.0) for r in rows), "loop_s": rows[-1]["time_s"],
            "wall_s": wall, "to95": reached["time_s"] if reached else None, "epochs": epochs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="an ImageFolder to benchmark besides the synthetic shapes")
    p.add_argument("--val-data", default="", help="its validation ImageFolder (default: a 20%% split)")
    p.add_argument("--raccoon", help="the raccoon dataset folder: adds the raccoon-vs-background crop set")
    p.add_argument("--synth-n", type=int, default=200, help="synthetic training images")
    p.add_argument("--no-synth", action="store_true", help="skip the synthetic shapes")
    p.add_argument("--image-size", type=int, default=64, help="synthetic shapes' side")
    p.add_argument("--photo-size", type=int, default=96, help="photo sets' side")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--feature-epochs", type=int, default=50,
                   help="epochs of transfer=features: cheap, as only the head trains on cached features")
    p.add_argument("--lr", type=float, default=3e-3, help="the head's (and scratch's) learning rate")
    p.add_argument("--amp", default="bf16", choices=("none", "bf16"))
    p.add_argument("--augment", default="none,standard", help="comma-separated presets")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine, 2 threads per process oversubscribe it)")
    p.add_argument("--side-by-side", action="store_true",
                   help="zir's default commands beside the timm reference on the photo sets (--clothing, "
                        "--raccoon-hard), --minutes each for fine-tuning")
    p.add_argument("--clothing", help="clothing_small: an ImageFolder with train/, validation/ and test/")
    p.add_argument("--raccoon-hard", help="the raccoon dataset folder: the harder crop task (same framing)")
    p.add_argument("--minutes", type=float, default=5.0, help="--side-by-side: fine-tune budget per recipe")
    p.add_argument("--zir-extra", action="append", default=[],
                   help="--side-by-side: another zir finetune row with these settings (e.g. augment=standard; "
                        "mode=features,views=4 for a features row)")
    p.add_argument("--no-zir-default", dest="zir_default", action="store_false",
                   help="--side-by-side: leave out zir's default-command rows (only --zir-extra rows)")
    p.add_argument("--no-timm", dest="timm", action="store_false", help="--side-by-side: leave out the timm rows")
    p.add_argument("--other-tta", action="store_true",
                   help="--side-by-side: also evaluate each zir run's weights with flip TTA switched the other way")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                   help="what time= and the timm budget count: wall-clock seconds, or the process's CPU seconds "
                        "(with 1 thread and no loader workers, what a quiet core would take; for a shared machine)")
    args = p.parse_args()
    if args.clock == "cpu":
        budget_clock.clock = time.process_time
    if args.side_by_side:
        args.modes = args.modes if args.modes != ",".join(MODES) else "features,finetune"
        with tempfile.TemporaryDirectory(prefix="zir-transfer-") as tmp:
            sets = []
            if args.clothing:
                root = Path(args.clothing)
                sets.append({"name": "clothing_small", "desc": f"{root.name} (train {root / 'train'}, validation, "
                             "test once)", "train": str(root / "train"), "val": str(root / "validation"),
                             "test": str(root / "test")})
            if args.raccoon_hard:
                counts = build_raccoon_hard(Path(args.raccoon_hard), Path(tmp) / "raccoon-hard")
                desc = ", ".join(f"{s}: " + " + ".join(f"{n} {c}" for c, n in counts[s].items()) for s in counts)
                sets.append({"name": "raccoon-hard", "desc": f"raccoon vs same-framing background crops ({desc})",
                             "train": str(Path(tmp) / "raccoon-hard" / "train"),
                             "val": str(Path(tmp) / "raccoon-hard" / "val")})
            load = os.getloadavg()
            print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
                  f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
                  f"{load[0]:.1f} at the start, torch {torch.__version__}\n\n"
                  f"`{' '.join(map(shlex.quote, ['python', *sys.argv]))}`")
            side_by_side(sets, args, tmp)
            print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
        return
    augments, modes = args.augment.split(","), args.modes.split(",")

    with tempfile.TemporaryDirectory(prefix="zir-transfer-") as tmp:
        datasets = []
        if not args.no_synth:
            datasets.append({"name": "synth", "desc": f"synthetic shapes, {args.synth_n} train / "
                             f"{args.synth_n // 2} val, {args.image_size} px",
                             "settings": {"data": "synth:classify", "synth_n": args.synth_n, "val_split": 0.5,
                                          "image_size": args.image_size}})
        if args.raccoon:
            counts = build_raccoon_crops(Path(args.raccoon), Path(tmp) / "raccoon-crops")
            desc = ", ".join(f"{s}: " + " + ".join(f"{n} {c}" for c, n in counts[s].items()) for s in counts)
            datasets.append({"name": "raccoon-crops", "desc": f"raccoon vs background crops ({desc}), "
                             f"{args.photo_size} px",
                             "settings": {"data": str(Path(tmp) / "raccoon-crops" / "train"),
                                          "val_path": str(Path(tmp) / "raccoon-crops" / "val"),
                                          "image_size": args.photo_size}})
        if args.data:
            datasets.append({"name": Path(args.data).name, "desc": f"{args.data}, {args.photo_size} px",
                             "settings": {"data": args.data, "val_path": args.val_data,
                                          "image_size": args.photo_size}})

        load = os.getloadavg()
        print(f"\n{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{args.threads} torch thread(s), load average {load[0]:.1f} at the start, "
              f"torch {torch.__version__}\n\n`{' '.join(map(shlex.quote, ['python', *sys.argv]))}`\n")
        for data in datasets:
            print(f"\n**{data['desc']}**, EfficientNet-Lite0, lr {args.lr}, batch 32, amp {args.amp}\n")
            print("| transfer | augment | epochs | best val acc | error reduction vs scratch/none | time to 95% "
                  "| train loop s | wall s |")
            print("|---|---|---|---|---|---|---|---|")
            base = None
            for mode in modes:
                for augment in augments:
                    if mode == "features" and augment != augments[0]:
                        continue  # features are computed once, without augmentation
                    r = run(data, mode, augment, args, tmp)
                    error = 1 - r["accuracy"]
                    if base is None and mode == "scratch" and augment == "none":
                        base = error
                    er = f"{error_reduction(base, error):+.1f}%" if base else "-"
                    to95 = f"{r['to95']:.0f} s" if r["to95"] is not None else "not reached"
                    print(f"| {mode} | {augment} | {r['epochs']} | {r['accuracy']:.4f} | {er} | {to95} | {r['loop_s']:.0f} "
                          f"| {r['wall_s']:.0f} |", flush=True)
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
