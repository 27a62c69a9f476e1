"""Does the timm recipe's evaluation preprocessing close zir's features-mode gap to the timm probe?

zir's own head solve (``Classifier.solve_head``: standardised features, L2 by 5-fold CV, L-BFGS) on
EfficientNet-Lite0 features computed two ways: ``squash`` (the whole image resized to 224 x 224, what zir
does) and ``crop875`` (shorter side to 256, centre crop 224: the timm reference's). Prints validation (and
test) accuracy per way, 1 thread::

    python benchmarks/transfer_crop.py raccoon squash crop875     # raccoon-hard (built as classify_transfer.py does)
    python benchmarks/transfer_crop.py clothing squash crop875    # ../shared/data/clothing_small
"""
import sys
import tempfile
import time
from pathlib import Path

import torch
from torchvision import datasets, transforms

from zir.models import build_model

sys.path.insert(0, str(Path(__file__).parent))  # classify_transfer.py, beside this file
torch.set_num_threads(1)
S = 224
tfs = {"squash": transforms.Compose([transforms.Resize((S, S)), transforms.ToTensor()]),
       "crop875": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(S), transforms.ToTensor()])}
which = sys.argv[1]
if which == "raccoon":
    from classify_transfer import build_raccoon_hard

    root = Path(tempfile.mkdtemp(prefix="zir-raccoon-hard-"))
    build_raccoon_hard(Path("../shared/data/raccoon"), root)
    splits = {"train": root / "train", "val": root / "val"}
else:
    root = Path("../shared/data/clothing_small")
    splits = {"train": root / "train", "val": root / "validation", "test": root / "test"}
for name in sys.argv[2:]:
    model = build_model("efficientnet_lite0", num_classes=len(datasets.ImageFolder(splits["train"]).classes),
                        image_size=S, args={"transfer": "features"}).eval()
    t0 = time.process_time()
    feats = {}
    for split, path in splits.items():
        xs, ys = [], []
        with torch.no_grad():
            for x, y in torch.utils.data.DataLoader(datasets.ImageFolder(path, tfs[name]), batch_size=32):
                xs.append(model.features(x))
                ys.append(y)
        feats[split] = (torch.cat(xs), torch.cat(ys))
    X, y = feats["train"]
    info = model.solve_head(X, y, torch.arange(len(y)))
    acc = {s: round((model.classify(f[0]).argmax(1) == f[1]).float().mean().item(), 4)
           for s, f in feats.items() if s != "train"}
    print(which, name, acc, "l2", info["l2"], "cpu s", round(time.process_time() - t0), flush=True)
