"""transfer=features: the backbone runs once, the head is solved on cached features, the saved model is whole."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from safetensors.torch import load_file

import zir
from zir.analysis.report import write_report
from zir.config import load_config
from zir.engine.data import build_datasets
from zir.engine.features import cache_key, feature_cache, feature_loaders, gather
from zir.engine.trainer import train
from zir.models import build_model, model_config
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
    result = train(cfg, progress=False, callbacks=[lambda info: per_epoch.append(calls["n"])],
                   on_end=[partial(write_report, progress=False)])
    run = result.run_dir

    # The backbone ran once per batch of train (40 / 16 -> 3 batches) and twice for validation's (8 -> 1):
    # the images and their mirrors (features mode's tta=2); the head is solved to convergence in one epoch
    # (epochs=3 is not used), its L2 strength cross-validated.
    assert per_epoch == [5] and result.epochs_done == 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train/grad_norm"] < 1e-5 and rows[0]["train/folds"] == 5 and rows[0]["train/l2"] > 0
    cache = load_file(str(run / "features.safetensors"))
    assert cache["train_features"].shape == (40, 1280) and cache["val_features"].shape == (8, 1280)
    assert cache["val_mirrored"].shape == (8, 1280) and not torch.equal(cache["val_mirrored"], cache["val_features"])

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
    # zir.evaluate(run, tta=1) scores the same weights without the mirror: the cached head on the plain
    # validation features is its oracle.
    predictor = zir.load(run)
    head = predictor.model.head_on_features()
    plain = torch.stack([p.scores.argmax() for p in head.predict(cache["val_features"])])
    expected = (plain == cache["val_labels"]).float().mean().item()
    assert zir.evaluate(run, progress=False, tta=1)["accuracy"] == pytest.approx(expected)
    pred = predictor.predict(torch.rand(3, 100, 80))[0]
    assert pred.scores.shape == (4,) and predictor.classes == ["circle", "square", "triangle", "star"]

    # The same run's settings read the cache instead of running the backbone again (a resumed run) ...
    before = calls["n"]
    saved_cfg = load_config(run / "config.yaml")
    data = build_datasets(saved_cfg.data, seed=saved_cfg.train.seed)
    model = build_model(saved_cfg.model, 4, 64, saved_cfg.model_args)
    key = cache_key(saved_cfg, model_config(saved_cfg.model, 4, 64, saved_cfg.model_args), train=40, val=8)
    train_loader, val_loader = feature_loaders(model, data, saved_cfg, torch.device("cpu"),
                                               run / "features.safetensors", key, progress=False)
    assert calls["n"] == before
    batch = next(iter(val_loader))
    assert torch.equal(batch.images, torch.stack([cache["val_features"], cache["val_mirrored"]], 1)[:8])
    assert len(batch.targets) == 8
    assert sum(len(b.targets) for b in train_loader) == 40
    # ... and other settings compute the features again (the file is overwritten for them).
    other = cache_key(saved_cfg, model_config(saved_cfg.model, 4, 64, {**saved_cfg.model_args, "pretrained": "none"}),
                      train=40, val=8)
    feature_loaders(model, data, saved_cfg, torch.device("cpu"), run / "features.safetensors", other, progress=False)
    assert calls["n"] == before + 5


def test_resume_in_features_mode_reads_the_cache_and_is_exact(tmp_path, monkeypatch):
    """A run interrupted after its (one, solving) epoch and resumed ends as one never interrupted, and the
    resumed run reads the features the first part cached (its key, from the saved config.yaml, is the same)."""
    common = FEATURES + [f"project={tmp_path}", "pretrained=none"]
    reference = train(load_config(overrides=common + ["name=ref"]), progress=False).run_dir

    def interrupt(info):
        if info["epoch"] == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_config(overrides=common + ["name=cut"]), callbacks=[interrupt], progress=False)
    monkeypatch.setattr(Classifier, "features", lambda self, images: pytest.fail("the backbone ran again"))
    result = train(load_config(), resume=tmp_path / "cut", progress=False)
    assert result.epochs_done == 1
    a = load_file(str(reference / "weights" / "last.safetensors"))
    b = load_file(str(result.run_dir / "weights" / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_features_mode_ignores_augmentation_unless_views_ask_for_it(tmp_path):
    """With data.augment set and views=1, the cached training features are still those of the plain images;
    views=3 adds two augmented views of each image after them, each row marked with its image."""
    cfg = load_config(overrides=FEATURES + [f"project={tmp_path}", "augment=standard"])
    plain = load_config(overrides=FEATURES + [f"project={tmp_path}"])
    views = load_config(overrides=FEATURES + [f"project={tmp_path}", "augment=standard", "views=3"])
    model = build_model(cfg.model, 4, 64, {**cfg.model_args, "pretrained": "none"}).eval()
    augmented, unaugmented = [
        feature_loaders(model, build_datasets(c.data, seed=0), c, torch.device("cpu"), None, "", progress=False)[0].dataset
        for c in (cfg, plain)]
    assert torch.equal(augmented.features, unaugmented.features)
    model.cfg.views = 3  # the same (random) weights, three views
    three = feature_loaders(model, build_datasets(views.data, seed=0), views, torch.device("cpu"), None, "",
                            progress=False)[0].dataset
    assert three.features.shape == (120, 1280) and torch.equal(three.groups, torch.arange(40).repeat(3))
    assert torch.equal(three.labels, unaugmented.labels.repeat(3))
    assert torch.allclose(three.features[:40], unaugmented.features)  # view 1 is the plain image
    assert not torch.allclose(three.features[40:80], unaugmented.features)  # views 2, 3 are augmented


def test_feature_cache_reads_only_what_was_written_for_its_key(tmp_path):
    path = tmp_path / "features.safetensors"
    computed: list[str] = []

    def compute(value: float):
        def run():
            computed.append(str(value))
            return {"x": torch.full((2, 3), value), "y": torch.arange(2)}
        return run

    first = feature_cache(path, "a", compute(1.0))
    assert computed == ["1.0"] and path.is_file()
    again = feature_cache(path, "a", compute(2.0))  # same key: read back, not computed
    assert computed == ["1.0"] and torch.equal(again["x"], first["x"]) and torch.equal(again["y"], first["y"])
    other = feature_cache(path, "b", compute(3.0))  # another key: computed, and the file now holds it
    assert computed == ["1.0", "3.0"] and float(other["x"][0, 0]) == 3.0
    assert float(feature_cache(path, "b", compute(4.0))["x"][0, 0]) == 3.0
    path.write_bytes(b"not a safetensors file")  # unreadable: computed again, not an error
    assert float(feature_cache(path, "b", compute(5.0))["x"][0, 0]) == 5.0
    elsewhere = tmp_path / "rank1.safetensors"
    feature_cache(elsewhere, "b", compute(6.0), write=False)  # not the main process: nothing written
    assert not elsewhere.exists()


def test_gather_concatenates_each_names_rows_and_leaves_out_none():
    rows = {0: {"f": torch.ones(2, 4), "i": torch.tensor([1, 2])}, 1: None, 2: {"f": torch.zeros(1, 4), "i": torch.tensor([3])}}
    out = gather(range(3), rows.__getitem__, "test", progress=False)
    assert out["f"].shape == (3, 4) and out["f"][:2].eq(1).all() and out["i"].tolist() == [1, 2, 3]
    assert gather(range(2), lambda i: None, "test", progress=False) == {}


def test_features_mode_ignores_ema_decay(tmp_path):
    """The head is solved to convergence, not stepped: train.ema_decay is documented as ignored, and the
    saved model is the same as without it (no average, no raw copy in last_state.pt)."""
    plain = train(load_config(overrides=FEATURES + [f"project={tmp_path}", "name=p"]), progress=False).run_dir
    ema = train(load_config(overrides=FEATURES + [f"project={tmp_path}", "name=e", "ema_decay=0.9"]),
                progress=False).run_dir
    a, b = (load_file(str(r / "weights" / "last.safetensors")) for r in (plain, ema))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "raw_weights" not in torch.load(ema / "weights" / "last_state.pt", weights_only=True)
