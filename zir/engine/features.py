"""The feature cache: what a frozen network computes from the training data, computed once, kept on disk.

Two ways of fitting a model (its registry entry says which, :data:`zir.models.base.Fitting`) start from
features that do not change while the model trains, so they are computed once per run and written to
``RUN/features.safetensors``; another epoch or a resumed run reads them back:

* ``features`` (the lecture's frozen feature extractor, the classifier's ``transfer=features``): the
  backbone's pooled features ``(N, F)`` of every training and validation image; the head is then solved
  on them (``model.solve_head``: a logistic regression to convergence, in seconds), and evaluated by
  ``model.head_on_features()`` (:func:`feature_loaders` gives loaders whose :class:`Batch` holds features
  ``(B, F)`` in ``images``). The features are those of the plain resized images, plus, with the model's
  ``views`` > 1, ``views - 1`` augmented views of each training image (the ``data.augment`` preset, or
  ``standard`` when that is ``none``), computed once: augmentation without running the backbone every
  epoch. ``train_groups`` says which training image each row comes from (cross-validation folds keep an
  image's views together). With the classifier's ``tta=2`` the validation images' mirrored features are
  cached too (``val_mirrored``), so the validation accuracy logged in training is the one ``predict`` gives.
* ``closed_form`` (R-CNN): ``model.training_features`` of every training image (its regions' CNN
  features and labels), from which ``model.fit_features`` solves the model (:func:`fit_closed_form`).
  With data augmentation, each image's cached rows are those of the one augmented view seen when the
  cache was made.

The file is reused only when it was written for the same :func:`cache_key` (model, its config, the data
settings, seed, amp and dataset sizes); otherwise it is computed again and overwritten. Models never
touch files: they give tensors, the engine caches them.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from zir.config import RunConfig
from zir.data.contract import Target
from zir.engine.checkpoint import atomic_write
from zir.engine.data import Batch, DataBundle, build_loader, collate, eval_transform, train_transform
from zir.engine.evaluate import autocast
from zir.models.base import FitsInClosedForm, TrainsOnFeatures, ZirModel

FEATURE_FILE = "features.safetensors"

T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# The cache


def cache_key(cfg: RunConfig, model_config: Any, **sizes: int) -> str:
    """What determines cached features: the model and its whole config, the data settings (not
    ``batch_size``/``workers``), the seed (it splits train/val), ``amp``, and the dataset sizes."""
    data = {k: v for k, v in asdict(cfg.data).items() if k not in ("batch_size", "workers")}
    return json.dumps({"model": cfg.model, "model_config": asdict(model_config), "data": data,
                       "seed": cfg.train.seed, "amp": cfg.train.amp, **sizes}, sort_keys=True)


def feature_cache(path: Path | None, key: str, compute: Callable[[], dict[str, Tensor]],
                  write: bool = True) -> dict[str, Tensor]:
    """The tensors in ``path`` when it was written for ``key``; else ``compute()``, written to ``path``
    (atomically, with ``key`` in its metadata) when ``write`` (the main process of a multi-process run)."""
    if path is not None and path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    return load_file(str(path))
        except (SafetensorError, OSError):
            pass  # unreadable (e.g. a half-copied run folder): compute it again
    tensors = compute()
    if path is not None and write:
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"key": key}))
    return tensors


def gather(items: Iterable[T], extract: Callable[[T], dict[str, Tensor] | None], desc: str,
           progress: bool = True) -> dict[str, Tensor]:
    """``extract`` every item (``None``: nothing from this one) and concatenate each name's rows (dim 0)
    into one contiguous CPU tensor; ``{}`` when nothing was extracted."""
    parts: dict[str, list[Tensor]] = {}
    for item in tqdm(items, desc=desc, leave=False, disable=not progress):
        rows = extract(item)
        for name, value in (rows or {}).items():
            parts.setdefault(name, []).append(value.cpu())
    return {name: torch.cat(values).contiguous() for name, values in parts.items()}


# --------------------------------------------------------------------------------------------------
# fitting="features": the head trains on cached backbone features


class FeatureDataset(Dataset):
    """Cached features: item ``i`` is ``{"features": (F,) float32, "label": int}``, or with ``mirrored``
    (the features of each image's left-right mirror, for the model's ``tta=2``) ``"features"`` of shape
    ``(2, F)``: the image's and its mirror's. ``groups[i]`` is the image row ``i`` comes from (several rows
    per image with augmented views)."""

    def __init__(self, features: Tensor, labels: Tensor, groups: Tensor | None = None,
                 mirrored: Tensor | None = None) -> None:
        self.features, self.labels, self.mirrored = features, labels, mirrored
        self.groups = torch.arange(len(labels)) if groups is None else groups

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        f = self.features[i] if self.mirrored is None else torch.stack([self.features[i], self.mirrored[i]])
        return {"features": f, "label": int(self.labels[i])}


def collate_features(samples: list[dict[str, Any]]) -> Batch:
    """A :class:`Batch` whose ``images`` are features ``(B, F)`` (``(B, 2, F)`` with mirrored views);
    targets keep the labels."""
    features = torch.stack([s["features"] for s in samples])
    return Batch(features, [Target(label=s["label"]) for s in samples])


@torch.no_grad()
def extract_features(model: TrainsOnFeatures, dataset: Dataset, cfg: RunConfig, device: torch.device,
                     progress: bool = True, desc: str = "features", mirror: bool = False) -> dict[str, Tensor]:
    """Run ``model.features`` once over ``dataset``: ``{"features" (N, F) float32, "labels" (N,) int64}``
    on the CPU (``{}`` for no images), with ``mirror`` also ``"mirrored" (N, F)``, the features of each
    image flipped left-right (as the classifier's ``tta=2`` sees it). Samples dropped by ``data.skip_bad``
    are left out."""
    loader = build_loader(dataset, cfg.data, train=False, seed=cfg.train.seed)

    def extract(batch: Batch) -> dict[str, Tensor] | None:
        if not batch.targets:
            return None
        images = batch.images.to(device)
        with autocast(device, cfg.train.amp):
            out = {"features": model.features(images).float()}  # (B, F)
            if mirror:
                out["mirrored"] = model.features(images.flip(-1)).float()
        return {**out, "labels": torch.as_tensor([int(t.label) for t in batch.targets])}

    return gather(loader, extract, desc, progress)


def feature_loaders(model: ZirModel, data: DataBundle, cfg: RunConfig, device: torch.device,
                    cache: Path | None = None, key: str = "", rank: int = 0, world: int = 1,
                    progress: bool = True) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders over the backbone features of ``data`` (``model`` is a
    :class:`~zir.models.base.TrainsOnFeatures`), read from ``cache`` when it holds them for ``key``, else
    computed (the model in eval mode) and written there.

    The training loader shuffles like :func:`zir.engine.data.build_loader` (order from ``(seed, epoch)``).
    """

    views = int(getattr(getattr(model, "cfg", None), "views", 1))
    mirror = getattr(getattr(model, "cfg", None), "tta", 1) == 2  # validation as predict sees it: with the mirror

    def compute() -> dict[str, Tensor]:
        if cfg.data.augment != "none" and views == 1 and progress:
            tqdm.write(f"transfer=features with views=1 ignores data.augment={cfg.data.augment}: the backbone "
                       "runs once, on the plain images (views=N caches N augmented views of each image)")
        plain = copy.copy(data.train)  # same images, without the augmentation
        plain.transform = eval_transform(data.task, cfg.data.image_size)  # type: ignore[attr-defined]
        augmented = copy.copy(data.train)  # views 2..N: the data's preset, standard when it has none
        augmented.transform = train_transform(data.task, cfg.data.image_size,  # type: ignore[attr-defined]
                                              cfg.data.augment if cfg.data.augment != "none" else "standard",
                                              orientation=cfg.data.orientation)
        was_training = model.training
        model.eval()
        extractor = cast(TrainsOnFeatures, model)
        train_rows = []
        for v in range(views):
            torch.manual_seed(cfg.train.seed * 7919 + v)  # each view's augmentation, reproducibly
            rows = extract_features(extractor, plain if v == 0 else augmented, cfg, device, progress,
                                    f"features (train, view {v + 1}/{views})" if views > 1 else "features (train)")
            if rows:
                rows["groups"] = torch.arange(len(rows["labels"]))  # image index; the same in every view
            train_rows.append(rows)
        parts = {"train": {name: torch.cat([r[name] for r in train_rows]) for name in train_rows[0]},
                 "val": extract_features(extractor, data.val, cfg, device, progress, "features (val)", mirror)}
        model.train(was_training)
        empty = {"features": torch.zeros(0, 0), "labels": torch.zeros(0, dtype=torch.int64),
                 "groups": torch.zeros(0, dtype=torch.int64), "mirrored": torch.zeros(0, 0)}
        names = {"train": ("features", "labels", "groups"),
                 "val": ("features", "labels", "mirrored") if mirror else ("features", "labels")}
        return {f"{split}_{name}": rows.get(name, empty[name]) for split, rows in parts.items() for name in names[split]}

    tensors = feature_cache(cache, key, compute, write=rank == 0)
    train_set = FeatureDataset(tensors["train_features"], tensors["train_labels"], tensors.get("train_groups"))
    val_set = FeatureDataset(tensors["val_features"], tensors["val_labels"], mirrored=tensors.get("val_mirrored"))
    B = cfg.data.batch_size
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed)
    drop_last = len(sampler) % B == 1  # a batch of one: as build_loader (it would break a BatchNorm head)
    train_loader = DataLoader(train_set, batch_size=B, sampler=sampler, collate_fn=collate_features,
                              drop_last=drop_last)
    val_loader = DataLoader(val_set, batch_size=B, shuffle=False, collate_fn=collate_features)
    return train_loader, val_loader


# --------------------------------------------------------------------------------------------------
# fitting="closed_form": the model is solved from cached features of the training images


def fit_closed_form(model: FitsInClosedForm, dataset: Dataset, device: torch.device, cache: Path | None = None,
                    key: str = "", write: bool = True, progress: bool = True) -> dict[str, float]:
    """One closed-form epoch: ``model.training_features`` of every training sample (read from ``cache``
    when it holds them for ``key``), then ``model.fit_features`` on all of them.

    Sample ``i``'s random choices come from a generator seeded with ``i``, so the rows do not depend on
    the visiting order. Returns the model's statistics plus ``features_s`` and ``fit_s`` (seconds).
    """
    t0 = time.time()

    def extract(i: int) -> dict[str, Tensor] | None:
        batch = collate([dataset[i]])  # one sample: floats in [0, 1], dropped when data.skip_bad marks it
        if not batch.targets:
            return None
        batch = batch.to(device)
        return model.training_features(batch.images[0], batch.targets[0], torch.Generator().manual_seed(i))

    features = feature_cache(cache, key, lambda: gather(range(len(dataset)), extract,  # type: ignore[arg-type]
                                                        "features (train)", progress), write)
    t_features = time.time() - t0
    stats = model.fit_features(features)
    return {**stats, "features_s": t_features, "fit_s": time.time() - t0}
