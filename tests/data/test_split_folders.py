"""A dataset folder that holds split folders (``train/``, ``val/``, ``test/``) opens as its ``train``
split, and training validates on its ``val`` split when there is one (ISBI: ``train/`` + unlabelled
``test/``; ImageFolder: ``train/<class>/`` + ``val/<class>/``)."""

from __future__ import annotations

import numpy as np
import pytest

from zir.config import DataConfig
from zir.data.formats import open_dataset
from zir.data.image_io import save_png
from zir.engine.data import build_datasets
from zir.errors import DataError


def _image(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(np.full((8, 8, 3), value, np.uint8), path)


def _isbi_like(root):
    for i in range(5):
        _image(root / "train" / "image" / f"{i}.png", 10 * i)
        mask = np.zeros((8, 8), np.uint8)
        mask[:4] = 255
        (root / "train" / "label").mkdir(parents=True, exist_ok=True)
        save_png(mask, root / "train" / "label" / f"{i}.png")
        _image(root / "test" / f"{i}.png", 5)  # unlabelled test slices
    return root


def test_isbi_layout_opens_its_train_split_and_splits_it_for_validation(tmp_path):
    root = _isbi_like(tmp_path / "isbi")
    index = open_dataset(root)
    assert index.task == "segment" and index.root == root / "train" and len(index.records) == 5
    bundle = build_datasets(DataConfig(path=str(root), val_split=0.4))
    assert len(bundle.train) == 3 and len(bundle.val) == 2  # test/ has no labels: not used


def test_imagefolder_splits_train_on_train_and_validate_on_val(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                _image(tmp_path / split / cls / f"{i}.png", 40 * i)
    index = open_dataset(tmp_path)
    assert index.classes == ["cat", "dog"] and len(index.records) == 6
    bundle = build_datasets(DataConfig(path=str(tmp_path)))
    assert len(bundle.train) == 6 and len(bundle.val) == 4
    assert all("/val/" in str(r.path) for r in bundle.val.records)


def test_split_folders_without_train_still_say_what_to_pass(tmp_path):
    for split in ("val", "test"):
        _image(tmp_path / split / "a.png")
    with pytest.raises(DataError, match="holds splits"):
        open_dataset(tmp_path)
