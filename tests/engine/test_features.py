"""transfer=features: the backbone runs once, the head trains on cached features, the saved model is whole."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

import zir
from zir.config import load_config
from zir.engine.data import build_datasets
from zir.engine.features import feature_loaders
from zir.engine.trainer import train
from zir.models import build_model
from zir.models.backbones import offline_state_dict
from zir.models.classify.classifier import Classifier

# 40 train + 8 validation synthetic 64x64 images; 3 epochs; one thread for reproducibility.
FEATURES = ["model=efficientnet_lite0", "transfer=features", "data=synth:classify", "synth_n=40", "image_size=64",
            "batch_size=16", "epochs=3", "lr=0.02", "warmup_epochs=0", "threads=1", "dropout=0.0"]


def test_features_mode_caches_once_trains_and_saves_the_whole_model(tmp_path, monkeypatch):
    calls = {"n": 0}
    features = Classifier.features

    def counting(self, images):
        calls["n"] += 1
        return features(self, images)

    monkeypatch.setattr(Classifier, "features", counting)
    cfg = load_config(overrides=FEATURES + [f"project={tmp_path}", "name=f"])
    per_epoch: list[int] = []
    result = train(cfg, progress=False, callbacks=[lambda info: per_epoch.append(calls["n"])])
    run = result.run_dir

    # The backbone ran once per batch of train (40 / 16 -> 3 batches) and validation (8 -> 1), not per epoch.
    assert per_epoch == [4, 4, 4]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/cls"] < rows[0]["train/cls"]
    cache = load_file(str(run / "features.safetensors"))
    assert cache["train_features"].shape == (40, 1280) and cache["val_features"].shape == (8, 1280)

    # The checkpoint is backbone + head; the backbone is exactly the pretrained one (BatchNorm statistics
    # included: it stayed in eval mode), and the head is trained.
    saved = load_file(str(run / "weights" / "best.safetensors"))
    pretrained = offline_state_dict("efficientnet_lite0")
    backbone = {k.removeprefix("backbone."): v for k, v in saved.items() if k.startswith("backbone.")}
    assert backbone.keys() == {k for k in pretrained if not k.startswith("classifier.")}
    assert all(torch.equal(v, pretrained[k]) for k, v in backbone.items())
    assert saved["head.weight"].shape == (4, 1280)

    # The whole model predicts on images: the report's evaluation (images -> backbone -> head) gives the
    # validation accuracy that training measured on the cached features.
    report_metrics = json.loads((run / "val_metrics.json").read_text())
    assert report_metrics["accuracy"] == result.best_metrics["accuracy"]
    predictor = zir.load(run)
    pred = predictor.predict(torch.rand(3, 100, 80))[0]
    assert pred.scores.shape == (4,) and predictor.classes == ["circle", "square", "triangle", "star"]

    # A resumed run reads the cache instead of running the backbone again.
    before = calls["n"]
    data = build_datasets(cfg.data, seed=cfg.train.seed)
    model = build_model(cfg.model, 4, 64, cfg.model_args)
    train_loader, val_loader = feature_loaders(model, data, cfg, torch.device("cpu"), run / "features.safetensors",
                                               reuse_cache=True, progress=False)
    assert calls["n"] == before
    batch = next(iter(val_loader))
    assert torch.equal(batch.images, cache["val_features"][:8]) and len(batch.targets) == 8
    assert sum(len(b.targets) for b in train_loader) == 40


def test_features_mode_ignores_augmentation(tmp_path):
    """With data.augment set, the cached training features are still those of the plain images."""
    cfg = load_config(overrides=FEATURES + [f"project={tmp_path}", "augment=standard"])
    plain = load_config(overrides=FEATURES + [f"project={tmp_path}"])
    model = build_model(cfg.model, 4, 64, {**cfg.model_args, "pretrained": "none"}).eval()
    augmented, unaugmented = [
        feature_loaders(model, build_datasets(c.data, seed=0), c, torch.device("cpu"), progress=False)[0].dataset
        for c in (cfg, plain)]
    assert torch.equal(augmented.features, unaugmented.features)
