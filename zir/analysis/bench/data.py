"""The data of a bench: a detection set split into training and test images, both written as COCO files."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zir.analysis.bench.recipes import KINDS
from zir.data.contract import Record
from zir.errors import ConfigError, DataError


@dataclass
class BenchData:
    """A detection set split into training and test images, both as COCO files.

    Attributes:
        name: shown in titles (``synth``, the dataset folder's name, ...).
        kind: which recipes train on it (``zir/analysis/bench/recipes/KIND``): ``synth`` or ``photo``.
        classes: class names, index = class id.
        train: COCO JSON of the training images (every model trains on it).
        test: COCO JSON of the test images: the ground truth of every score.
    """

    name: str
    kind: str
    classes: list[str]
    train: Path
    test: Path

    def summary(self) -> dict[str, Any]:
        n = {split: len(json.loads(getattr(self, split).read_text())["images"]) for split in ("train", "test")}
        return {"name": self.name, "kind": self.kind, "classes": self.classes, "train": str(self.train),
                "test": str(self.test), "n_train": n["train"], "n_test": n["test"]}


def from_coco(train: str | Path, test: str | Path, name: str, kind: str = "photo") -> BenchData:
    """A :class:`BenchData` of two COCO files that share their categories."""
    train, test = Path(train), Path(test)
    classes = [[c["name"] for c in sorted(json.loads(p.read_text())["categories"], key=lambda c: c["id"])]
               for p in (train, test)]
    if classes[0] != classes[1]:
        raise DataError(test, f"test classes {classes[1]} differ from the training classes {classes[0]}")
    if kind not in KINDS:
        raise ConfigError(f"data kind must be one of {KINDS}, got {kind!r}")
    return BenchData(name, kind, classes[0], train, test)


def prepare_synth(out: str | Path, n_train: int = 800, n_test: int = 200, image_size: int = 256,
                  **scene: Any) -> BenchData:
    """zir's synthetic shapes on disk (COCO), training and test scenes from different seeds.

    The scenes are the demo's (up to 4 objects of 15-50% of the side) unless ``scene`` says otherwise
    (:class:`~zir.data.synth.SynthConfig` fields): with the default scenes (up to 15 objects from 2% of
    the side) no detector learns anything visible in a CPU budget of minutes.
    """
    from zir.data.synth import DEMO_SCENES, SynthConfig, write_synth

    scene = {**DEMO_SCENES, **scene}
    out = Path(out)
    files = {}
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 10_000)):
        cfg = SynthConfig(task="detect", n=n, seed=seed, image_size=image_size, **scene)
        folder = out / f"synth_{split}"
        stamp = folder / "synth.json"  # reuse scenes written before with the same settings
        if not (stamp.is_file() and json.loads(stamp.read_text()) == dataclasses.asdict(cfg)):
            write_synth(cfg, folder, progress=False, overwrite=True)
            stamp.write_text(json.dumps(dataclasses.asdict(cfg)))
        files[split] = folder / "annotations.json"
    return from_coco(files["train"], files["test"], "synth", "synth")


def prepare_data(data: str | Path, out: str | Path, test: str | Path = "", test_split: float = 0.2,
                 format: str = "auto", seed: int = 0, synth_n: int = 800) -> BenchData:
    """The training and test images of a detection set, written as two COCO files under ``out``.

    Args:
        data: a dataset folder or file of any format zir reads (COCO, YOLO, VOC; an instance set serves
            as boxes), or ``synth`` for zir's synthetic shapes (:func:`prepare_synth`).
        test: a separate test set; if empty, ``test_split`` of ``data`` is held out, the same images
            ``zir train data=DATA val_split=...`` holds out for validation (same seed, same split).
        format: ``auto`` or a reader name.
        synth_n: ``synth`` only: training scenes; the test scenes are a quarter as many.

    Raises:
        DataError: the data is not a detection set, or fails zir's data checks (run ``zir data check``).
    """
    from zir.config import DataConfig
    from zir.engine.data import build_datasets

    out = Path(out)
    if str(data) == "synth":
        return prepare_synth(out, n_train=synth_n, n_test=max(1, synth_n // 4))
    bundle = build_datasets(DataConfig(path=str(data), format=format, val_path=str(test), val_split=test_split),
                            seed=seed)
    if bundle.task not in ("detect", "instance"):
        raise DataError(data, f"this is a {bundle.task} dataset; zir bench detectors needs boxes: a COCO, YOLO "
                              "or Pascal VOC detection set, or `synth`")
    files = {}
    for split, dataset in (("train", bundle.train), ("test", bundle.val)):
        records = [_boxes_only(r) for r in dataset.records]  # type: ignore[attr-defined]
        # File names relative to the JSON's folder, so zir's COCO reader finds the images where they are.
        files[split] = _write_coco(records, bundle.classes, out / f"{split}.json")
    name = Path(data).stem if Path(data).is_file() else Path(data).resolve().name
    return from_coco(files["train"], files["test"], name, "photo")


def _boxes_only(record: Record) -> Record:
    """The record with its boxes only (an instance set trains detectors), its size read if missing."""
    from zir.data.formats._common import header_size

    width, height = record.width, record.height
    if not (width and height):
        width, height = header_size(record.path) or (None, None)
    return dataclasses.replace(record, path=record.path.resolve(), width=width, height=height,
                               segmentations=[], mask_path=None, segments=[])


def _write_coco(records: list[Record], classes: list[str], path: Path) -> Path:
    from zir.data.formats.coco import write_coco_json

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_coco_json(records, classes, path.resolve(), path.parent.resolve())


