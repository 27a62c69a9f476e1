"""zir's features-mode head against scikit-learn's probe over many train/validation splits, same features.

``classify_transfer.py --side-by-side`` compares ``transfer=features`` with the timm reference's probe on
one fixed split, where the two differ by one to three images (raccoon-hard: 1 of 73). This asks whether
that difference is the solver or the split: the training and validation images of a set are pooled
(clothing's test split stays out, untouched), split again ``--splits`` times at random with the original
sizes and class shares, and on each split both solvers fit the same EfficientNet-Lite0 features (zir's
evaluation preprocessing, the image resized to 224 x 224):

  * zir: ``Classifier.solve_head`` (standardised features, L2 by 5-fold cross-validation, L-BFGS);
  * sklearn: ``LogisticRegression(max_iter=5000)`` on the raw features (C=1), the reference's probe.

Prints each split's two accuracies and, over all splits, the mean accuracy of each, the splits each one
wins, and the paired count of validation images only one of them gets right. 1 thread::

    python benchmarks/probe_splits.py --raccoon-hard ../shared/data/raccoon --clothing ../shared/data/clothing_small
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torchvision import datasets, transforms

from zir.models import build_model

S = 224


def features(folders: list[Path]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Pooled EfficientNet-Lite0 features of every image in the ImageFolders (same classes): ``(X, y, C)``."""
    classes = datasets.ImageFolder(folders[0]).classes
    model = build_model("efficientnet_lite0", num_classes=len(classes), image_size=S,
                        args={"transfer": "features"}).eval()
    tf = transforms.Compose([transforms.Resize((S, S)), transforms.ToTensor()])
    xs, ys = [], []
    with torch.no_grad():
        for folder in folders:
            data = datasets.ImageFolder(folder, tf)
            if data.classes != classes:
                raise SystemExit(f"{folder}: classes {data.classes} differ from {classes}")
            for x, y in torch.utils.data.DataLoader(data, batch_size=32):
                xs.append(model.features(x))
                ys.append(y)
    return torch.cat(xs), torch.cat(ys), len(classes)


def split(y: torch.Tensor, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random stratified split with ``n_val`` validation rows (each class its share): (train, val) index."""
    g = torch.Generator().manual_seed(seed)
    val = []
    for c in torch.unique(y):
        members = (y == c).nonzero().squeeze(1)
        k = round(n_val * len(members) / len(y))
        val.append(members[torch.randperm(len(members), generator=g)[:k]])
    val = torch.cat(val)
    train = torch.ones(len(y), dtype=torch.bool)
    train[val] = False
    return train.nonzero().squeeze(1), val


def compare(name: str, X: torch.Tensor, y: torch.Tensor, C: int, n_val: int, splits: int) -> None:
    from sklearn.linear_model import LogisticRegression

    model = build_model("efficientnet_lite0", num_classes=C, image_size=S, args={"transfer": "features"}).eval()
    rows, only_zir, only_sk = [], 0, 0
    for seed in range(splits):
        tr, va = split(y, n_val, seed)
        info = model.solve_head(X[tr], y[tr], torch.arange(len(tr)))
        with torch.no_grad():
            zir_ok = model.classify(X[va]).argmax(1) == y[va]
        probe = LogisticRegression(max_iter=5000).fit(X[tr].numpy(), y[tr].numpy())
        sk_ok = torch.as_tensor(probe.predict(X[va].numpy())) == y[va]
        only_zir += int((zir_ok & ~sk_ok).sum())
        only_sk += int((sk_ok & ~zir_ok).sum())
        rows.append((zir_ok.float().mean().item(), sk_ok.float().mean().item()))
        print(f"{name} split {seed}: zir {rows[-1][0]:.4f} (L2 {info['l2']:.3g})  sklearn {rows[-1][1]:.4f}", flush=True)
    z, s = (sum(r[i] for r in rows) / len(rows) for i in (0, 1))
    wins = sum(a > b for a, b in rows), sum(b > a for a, b in rows)
    print(f"\n| set | splits | validation images | zir mean acc | sklearn mean acc | splits won (zir / sklearn / tied) "
          f"| images only zir gets right | only sklearn |\n|---|---|---|---|---|---|---|---|\n"
          f"| {name} | {splits} | {n_val} | {z:.4f} | {s:.4f} | {wins[0]} / {wins[1]} / {splits - sum(wins)} "
          f"| {only_zir} | {only_sk} |\n", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raccoon-hard", help="the raccoon dataset folder (the crop set classify_transfer.py builds)")
    ap.add_argument("--clothing", help="clothing_small: train/ and validation/ pooled (test/ is not read)")
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).parent))  # classify_transfer.py, beside this file
    print(f"`python benchmarks/probe_splits.py {' '.join(sys.argv[1:])}`, torch {torch.__version__}, "
          f"{args.threads} thread(s)\n", flush=True)
    sets = []
    if args.raccoon_hard:
        from classify_transfer import build_raccoon_hard

        root = Path(tempfile.mkdtemp(prefix="zir-raccoon-hard-"))
        build_raccoon_hard(Path(args.raccoon_hard), root)
        sets.append(("raccoon-hard", [root / "train", root / "val"]))
    if args.clothing:
        sets.append(("clothing_small", [Path(args.clothing) / "train", Path(args.clothing) / "validation"]))
    for name, folders in sets:
        start = time.process_time()
        X, y, C = features(folders)
        n_val = len(datasets.ImageFolder(folders[1]))
        compare(name, X, y, C, n_val, args.splits)
        print(f"{name}: {time.process_time() - start:.0f} CPU s", flush=True)


if __name__ == "__main__":
    main()
