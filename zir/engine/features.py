"""``transfer=features``: run the frozen backbone once, cache the features, train only the head on them.

The lecture's frozen feature extractor: the pretrained network's pooled features are fixed, so they are
computed once per image (train and validation) instead of once per image and epoch; training the
linear head (multinomial logistic regression) on ``(N, F)`` vectors then takes seconds.

The training loop does not change: :func:`feature_loaders` gives loaders whose :class:`Batch` holds
features ``(B, F)`` in ``images``, and :class:`HeadOnFeatures` is the model the loop trains and evaluates
(``loss`` and ``predict`` on features). The checkpoints still hold the whole model (backbone + head), so
``zir.load`` / ``zir predict`` / the report work on images as for any run.

Augmentation is ignored in this mode (``data.augment``): the features are those of the plain resized
images, because an augmented view would have to be run through the backbone again every epoch, which
is what this mode avoids. With ``data.augment`` other than ``none`` a note says so.

Features are also written to ``RUN/features.safetensors``, so a resumed run does not recompute them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from zir.config import RunConfig
from zir.data.contract import ClassPrediction, Target
from zir.engine.checkpoint import atomic_write
from zir.engine.data import Batch, DataBundle, build_loader, eval_transform
from zir.engine.evaluate import autocast
from zir.models.base import ZirModel
from zir.models.classify.classifier import Classifier, cross_entropy, to_predictions


class FeatureDataset(Dataset):
    """Cached features: item ``i`` is ``{"features": (F,) float32, "label": int}``."""

    def __init__(self, features: Tensor, labels: Tensor) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"features": self.features[i], "label": int(self.labels[i])}


def collate_features(samples: list[dict[str, Any]]) -> Batch:
    """A :class:`Batch` whose ``images`` are features ``(B, F)``; targets keep the labels."""
    features = torch.stack([s["features"] for s in samples])
    return Batch(features, [Target(label=s["label"]) for s in samples])


class HeadOnFeatures(ZirModel):
    """What the loop trains in features mode: ``model``'s head, fed cached features instead of images.

    ``loss(features (B, F), targets)`` and ``predict(features (B, F))``; the backbone is not called.
    """

    task = "classify"

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def loss(self, features: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        return {"cls": cross_entropy(self.model.classify(features), targets)}

    @torch.no_grad()
    def predict(self, features: Tensor) -> list[ClassPrediction]:  # type: ignore[override]
        return to_predictions(self.model.classify(features))


@torch.no_grad()
def extract_features(model: Classifier, dataset: Dataset, cfg: RunConfig, device: torch.device,
                     progress: bool = True, desc: str = "features") -> tuple[Tensor, Tensor]:
    """Run the backbone once over ``dataset``: ``(features (N, F) float32, labels (N,) int64)`` on the CPU.

    Samples dropped by ``data.skip_bad`` are left out.
    """
    was_training = model.training
    model.eval()
    loader = build_loader(dataset, cfg.data, train=False, seed=cfg.train.seed)
    features, labels = [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress):
        if not batch.targets:
            continue
        with autocast(device, cfg.train.amp):
            features.append(model.features(batch.images.to(device)).float().cpu())  # (B, F)
        labels.append(torch.as_tensor([t.label for t in batch.targets]))
    model.train(was_training)
    if not features:
        return torch.zeros(0, model.backbone.num_features), torch.zeros(0, dtype=torch.int64)
    return torch.cat(features), torch.cat(labels)


def feature_loaders(model: Classifier, data: DataBundle, cfg: RunConfig, device: torch.device,
                    cache: Path | None = None, reuse_cache: bool = False, rank: int = 0, world: int = 1,
                    progress: bool = True) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders over cached backbone features, computed now and written to ``cache``,
    or read from it with ``reuse_cache`` (a resumed run; a new run never trusts a file it finds there).

    The training loader shuffles like :func:`zir.engine.data.build_loader` (order from ``(seed, epoch)``).
    """
    if reuse_cache and cache is not None and cache.is_file():
        tensors = load_file(str(cache))
    else:
        if cfg.data.augment != "none" and progress:
            tqdm.write(f"transfer=features ignores data.augment={cfg.data.augment}: the backbone runs once, "
                       "on the plain images (augmentation needs transfer=finetune or scratch)")
        train_set = copy.copy(data.train)  # same images, without the augmentation
        train_set.transform = eval_transform(data.task, cfg.data.image_size)  # type: ignore[attr-defined]
        train_x, train_y = extract_features(model, train_set, cfg, device, progress, "features (train)")
        val_x, val_y = extract_features(model, data.val, cfg, device, progress, "features (val)")
        tensors = {"train_features": train_x, "train_labels": train_y, "val_features": val_x, "val_labels": val_y}
        if cache is not None and rank == 0:
            atomic_write(cache, lambda tmp: save_file(tensors, tmp))
    train_set = FeatureDataset(tensors["train_features"], tensors["train_labels"])
    val_set = FeatureDataset(tensors["val_features"], tensors["val_labels"])
    B = cfg.data.batch_size
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed)
    drop_last = len(sampler) % B == 1  # a batch of one: as build_loader (it would break a BatchNorm head)
    train_loader = DataLoader(train_set, batch_size=B, sampler=sampler, collate_fn=collate_features,
                              drop_last=drop_last)
    val_loader = DataLoader(val_set, batch_size=B, shuffle=False, collate_fn=collate_features)
    return train_loader, val_loader
