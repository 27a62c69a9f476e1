"""From a :class:`~zir.config.DataConfig` to data loaders: read, check, split, transform, batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from zir.augment._base import GeometricMixin, default_fill
from zir.config import DataConfig
from zir.data.contract import DatasetIndex, Problem, Target
from zir.errors import ConfigError, DataError
from zir.models.detect.transform import pad_batch


@dataclass
class Batch:
    """What the training loop gets from the loader.

    Attributes:
        images: float32 ``(B, 3, H, W)`` in [0, 1]; images of different sizes are zero-padded at the
            bottom and right to the largest one (``targets[i].size`` keeps each one's own size).
        targets: one :class:`~zir.data.contract.Target` per image: the sample's annotations and the
            image's own ``size`` ``(h, w)``.
        skipped: errors of samples dropped with ``skip_bad``.
    """

    images: Tensor
    targets: list[Target]
    skipped: list[str] = field(default_factory=list)

    def to(self, device: torch.device) -> Batch:
        return Batch(self.images.to(device, non_blocking=True), [t.to(device) for t in self.targets], self.skipped)


def collate(samples: list[dict[str, Any]]) -> Batch:
    """Batch samples: uint8 images become float in [0, 1] (after augmentation, which is faster on uint8),
    zero-padded into one tensor (:func:`~zir.models.detect.transform.pad_batch`); each sample's
    annotations become a :class:`~zir.data.contract.Target` with the image's own size."""
    skipped = [s["bad"] for s in samples if "bad" in s]
    good = [s for s in samples if "bad" not in s]
    if not good:
        return Batch(torch.zeros(0, 3, 1, 1), [], skipped)
    images = [s["image"].as_subclass(Tensor) for s in good]
    images = pad_batch([im.float() / 255 if im.dtype == torch.uint8 else im.float() for im in images],
                       size_divisible=1)
    return Batch(images, [Target.from_sample(s, tuple(s["image"].shape[-2:])) for s in good], skipped)


def eval_transform(task: str, image_size: int) -> v2.Transform:
    """The resize every image gets before the model (training adds augmentation after it).

    Classifiers see square ``image_size`` inputs. For dense tasks the longer side becomes ``image_size``
    (aspect kept; boxes and masks follow); batches pad to the largest image, and each model's
    ``predict`` maps its results back to the pixels of whatever image it is given.
    """
    if task == "classify":
        return v2.Resize((image_size, image_size), antialias=True)
    return v2.Resize(size=None, max_size=image_size, antialias=True)


def train_transform(task: str, image_size: int, preset: str, crop: int = 0,
                    orientation: str = "upright") -> v2.Transform:
    """``eval_transform``, then (``crop`` > 0) a random ``crop`` x ``crop`` window, then augmentation
    ``preset`` at the crop's size (``orientation``: see :func:`zir.augment.build_augment`).

    Classification with a preset is the exception: its presets begin with a random resized crop to
    ``image_size``, taken from the image as it was read. Squashing the image to ``image_size`` first (as
    evaluation does) would make a crop of a quarter of it a 2x upsampled, blurred view, and distort the
    aspect twice."""
    if task == "classify" and preset != "none":
        from zir.augment import build_augment

        return build_augment(preset, task=task, image_size=image_size, orientation=orientation)
    steps = [eval_transform(task, image_size)]
    if crop:
        steps.append(RandomCrop(crop))
    if preset != "none":
        from zir.augment import build_augment  # imported lazily: only training with augmentation needs it

        steps.append(build_augment(preset, task=task, image_size=crop or image_size, orientation=orientation))
    return steps[0] if len(steps) == 1 else v2.Compose(steps)


class RandomCrop(GeometricMixin, v2.RandomCrop):
    """A random ``size`` x ``size`` window; a smaller image is padded (image 114, semantic map 255 =
    ignore, so padding never counts as background)."""

    def __init__(self, size: int) -> None:
        super().__init__(size, pad_if_needed=True, fill=default_fill(None))


def check_crop(cfg: DataConfig, task: str) -> None:
    """``data.crop`` is for semantic segmentation (boxes and instance masks would need cutting too)."""
    if not cfg.crop:
        return
    if task != "segment":
        raise ConfigError(f"data.crop={cfg.crop} is for task segment only (this data is {task}); "
                          "remove it, or use augment=standard for scale and translation")
    if not 8 <= cfg.crop <= cfg.image_size:
        raise ConfigError(f"data.crop={cfg.crop} must be between 8 and data.image_size={cfg.image_size}")


@dataclass
class DataBundle:
    """Train and validation datasets with what the rest of the run needs to know about them."""

    train: Dataset
    val: Dataset
    classes: list[str]
    task: str
    problems: list[Problem] = field(default_factory=list)
    thing_classes: list[bool] | None = None  # panoptic: True for thing classes, False for stuff


def build_datasets(cfg: DataConfig, seed: int = 0) -> DataBundle:
    """See :func:`_build_datasets`; adds mosaic to detection training data when ``cfg.mosaic > 0``."""
    bundle = _build_datasets(cfg, seed)
    if cfg.mosaic > 0 and bundle.task == "detect":
        from zir.augment.mosaic import Mosaic

        bundle.train = Mosaic(bundle.train, p=cfg.mosaic, size=cfg.image_size, off_epochs=cfg.mosaic_off_epochs)
    return bundle


def start_epoch(dataset: Dataset, epoch: int, epochs: int) -> None:
    """Tell the training data which epoch starts (``epoch`` of ``epochs``, 0-based): mosaic switches off for
    the last ``data.mosaic_off_epochs``. Other datasets do not depend on the epoch."""
    from zir.augment.mosaic import Mosaic

    if isinstance(dataset, Mosaic):
        dataset.set_epoch(epoch, epochs)


def _build_datasets(cfg: DataConfig, seed: int = 0) -> DataBundle:
    """Read (or synthesise) the data, apply the data checks, split train/val and attach transforms.

    Raises:
        DataError: for the first bad record unless ``cfg.skip_bad`` (then bad records are dropped and
            listed in ``DataBundle.problems``).
    """
    if not cfg.path:
        raise DataError("<config>", "no dataset given; pass data=PATH (or data=synth:classify for built-in shapes)")
    if cfg.path.startswith("synth:"):
        return _synth_datasets(cfg, seed)

    from zir.data.formats import open_dataset

    index = _usable(open_dataset(cfg.path, format=cfg.format), cfg)
    task = index.task
    val_path = cfg.val_path or _val_split_folder(cfg)
    if val_path:
        val_index = _usable(open_dataset(val_path, format=cfg.format), cfg)
        if val_index.classes != index.classes:
            raise DataError(val_path, f"validation classes {val_index.classes} differ from training "
                                          f"classes {index.classes}; use the same class list in both")
        train_records, val_records = index.records, val_index.records
    else:
        train_records, val_records = _split(index.records, cfg.val_split, seed)
        val_index = index
    from zir.data.dataset import ZirDataset

    check_crop(cfg, task)
    train = ZirDataset(index, train_transform(task, cfg.image_size, cfg.augment, cfg.crop, cfg.orientation), cfg.skip_bad,
                       train_records)
    val = ZirDataset(val_index, eval_transform(task, cfg.image_size), cfg.skip_bad, val_records)
    return DataBundle(train, val, index.classes, task, index.problems + (val_index.problems if val_path else []),
                      index.thing_classes)


def _val_split_folder(cfg: DataConfig) -> str:
    """``PATH/val`` (or ``valid``, ``validation``) when ``PATH`` is a folder of split folders; else ``""``
    (and ``val_split`` of the training data validates). ISBI's ``test/`` has no labels: it is not used."""
    from zir.data.formats import split_folder

    root = Path(cfg.path)
    if cfg.format != "auto" or not root.is_dir() or split_folder(root, "train") is None:
        return ""
    val = split_folder(root, "val")
    return str(val) if val is not None else ""


def _usable(index: DatasetIndex, cfg: DataConfig) -> DatasetIndex:
    """Apply ``zir data check``'s checks (headers, and a cheap decode that finds truncated images, so it
    stays fast): raise on the first error, or drop the bad records with ``skip_bad``."""
    from zir.data.check import bad_records, check_dataset

    report = check_dataset(index, open_images=False, progress=False, verify=True)
    errors = report.errors()
    if errors and not cfg.skip_bad:
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise DataError(errors[0].file, f"{errors[0].message}{more}; run `zir data check {cfg.path}` to list "
                                        "them all, or train with data.skip_bad=true to leave them out",
                        where=errors[0].where)
    bad = bad_records(index, report)
    if bad:
        index.records = [r for i, r in enumerate(index.records) if i not in bad]
        index.problems = errors
    if not index.records:
        raise DataError(cfg.path, "the dataset has no usable images")
    return index


def _split(records: list, val_split: float, seed: int) -> tuple[list, list]:
    if not 0 < val_split < 1:
        raise DataError("<config>", f"data.val_split must be between 0 and 1, got {val_split}; "
                                    "or give data.val_path")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(records), generator=g).tolist()
    n_val = max(1, round(len(records) * val_split))
    return [records[i] for i in sorted(perm[n_val:])], [records[i] for i in sorted(perm[:n_val])]


def _synth_datasets(cfg: DataConfig, seed: int) -> DataBundle:
    from zir.data.synth import SynthDataset

    task = cfg.path.split(":", 1)[1] or "classify"
    n_val = max(1, round(cfg.synth_n * cfg.val_split))
    size = cfg.image_size if task == "classify" else max(cfg.image_size, 64)
    check_crop(cfg, task)
    # Validation scenes come from another seed, so they are never training scenes.
    train = SynthDataset(task=task, n=cfg.synth_n, seed=seed, image_size=size,
                         transform=train_transform(task, cfg.image_size, cfg.augment, cfg.crop, cfg.orientation))
    val = SynthDataset(task=task, n=n_val, seed=seed + 10_000, image_size=size,
                       transform=eval_transform(task, cfg.image_size))
    return DataBundle(train, val, list(train.classes), task, thing_classes=train.thing_classes)


def build_loader(dataset: Dataset, cfg: DataConfig, *, train: bool, seed: int, rank: int = 0,
                 world: int = 1) -> DataLoader:
    """A loader whose order depends only on ``(seed, epoch)``: the same in one process and across ranks.

    Training uses DistributedSampler even in one process (``num_replicas=1``), so the sequence of
    global batches of a single-process run equals that of an N-process run with 1/N the batch each.
    """
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=train, seed=seed,
                                 drop_last=False) if train else None
    n_local = len(sampler) if sampler is not None else len(dataset)
    drop_last = train and n_local % cfg.batch_size == 1  # a batch of one breaks BatchNorm
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, shuffle=False,
                      num_workers=cfg.workers, collate_fn=collate, drop_last=drop_last,
                      persistent_workers=False, pin_memory=False)
