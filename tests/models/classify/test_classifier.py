"""The transfer-learning classifier: real ImageNet weights, what each transfer mode trains, predict, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from zir.cli import main
from zir.config import load_config
from zir.data.contract import Target
from zir.engine.predictor import load
from zir.engine.trainer import train
from zir.errors import ConfigError
from zir.models import MODELS, build_model
from zir.models.backbones import offline_state_dict
from zir.models.classify.classifier import Classifier, ClassifierConfig
from zir.models.classify.imagenet import imagenet_classes, imagenet_classifier

skimage_data = pytest.importorskip("skimage.data")  # test-only oracle: real photos


def photo(name: str) -> torch.Tensor:
    """A real photo from scikit-image as float ``(3, H, W)`` in [0, 1]."""
    return torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1).float() / 255


def tiny(transfer: str, pretrained: str = "imagenet", **kw) -> Classifier:
    return Classifier(ClassifierConfig(num_classes=3, image_size=64, transfer=transfer, pretrained=pretrained, **kw))


def test_imagenet_weights_classify_real_photos():
    """The shipped weights map onto timm's network: a cat photo -> a cat class (281-285), espresso -> 967."""
    model = imagenet_classifier("efficientnet_lite0")
    cat, espresso = model.predict([photo("chelsea"), photo("coffee")])  # 300x451 and 400x600: resized to 224
    assert 281 <= cat.label <= 285, imagenet_classes()[cat.label]
    assert espresso.label == 967 and imagenet_classes()[967] == "espresso"
    assert len(imagenet_classes()) == 1000 and imagenet_classes()[285] == "Egyptian cat"


def test_transfer_modes_train_exactly_what_they_should():
    pretrained = offline_state_dict("efficientnet_lite0")
    lr = 1e-2
    images = torch.rand(2, 3, 32, 32)  # small: the test is about what gets gradients, not accuracy
    targets = [Target(label=0), Target(label=2)]

    # features: the backbone is frozen and in eval mode (BatchNorm statistics stay), only the head trains.
    model = tiny("features").train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert not any(m.training for m in model.backbone.modules()) and model.head.training
    groups = model.param_groups(lr, 0.05)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.head.parameters()}
    bn_mean = model.backbone.bn2.running_mean.clone()
    model.loss(images, targets)["cls"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    assert torch.equal(model.backbone.bn2.running_mean, bn_mean)
    assert torch.equal(model.backbone.conv_stem.weight, pretrained["conv_stem.weight"])

    # finetune: everything trains; the backbone at backbone_lr x the head's learning rate.
    model = tiny("finetune", backbone_lr=0.1).train()
    assert all(p.requires_grad for p in model.parameters()) and model.backbone.training
    groups = model.param_groups(lr, 0.05)
    head_ids = {id(p) for p in model.head.parameters()}
    assert groups[0]["lr"] == lr  # group 0 is the head's: the trainer logs its lr
    for g in groups:
        expected = lr if {id(p) for p in g["params"]} <= head_ids else lr * 0.1
        assert g["lr"] == pytest.approx(expected)
        assert g["weight_decay"] == (0.0 if g["params"][0].ndim <= 1 else 0.05)
    assert sorted({g["lr"] for g in groups}) == pytest.approx([lr * 0.1, lr])
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())  # each parameter once
    assert torch.equal(model.backbone.conv_stem.weight, pretrained["conv_stem.weight"])
    model.loss(images, targets)["cls"].backward()
    assert all(p.grad is not None for p in model.parameters())  # every parameter gets a gradient

    # scratch: same architecture, random weights, one learning rate.
    model = tiny("scratch")
    assert not torch.equal(model.backbone.conv_stem.weight, pretrained["conv_stem.weight"])
    assert {g["lr"] for g in model.param_groups(lr, 0.05)} == {lr}
    assert all(p.requires_grad for p in model.parameters())


def test_freeze_epochs_follow_the_epoch_number():
    model = tiny("finetune", pretrained="none", freeze_epochs=2).train()
    for epoch, frozen in [(0, True), (1, True), (2, False), (3, False), (0, True)]:  # resume sets any epoch
        model.set_epoch(epoch)
        assert all(p.requires_grad != frozen for p in model.backbone.parameters()), epoch
        assert all(m.training != frozen for m in model.backbone.modules()), epoch
        assert model.head.training and model.head.weight.requires_grad
    # The frozen backbone is still in the optimizer, so it trains once unfrozen.
    ids = {id(p) for g in model.param_groups(1e-3, 0.0) for p in g["params"]}
    assert ids == {id(p) for p in model.parameters()}


def test_freeze_epochs_in_training(tmp_path):
    """Through the trainer: epoch 1 moves only the head (BatchNorm statistics too stay), epoch 2 all."""
    cfg = load_config(overrides=["model=classifier", "data=synth:classify", "synth_n=24", "image_size=32",
                                 "batch_size=8", "epochs=2", "lr=0.01", "threads=1", "warmup_epochs=0",
                                 "model_args={pretrained: none, freeze_epochs: 1}", f"project={tmp_path}"])
    seen: list[dict[str, torch.Tensor]] = []
    train(cfg, progress=False, callbacks=[lambda info: seen.append(
        {k: v.clone() for k, v in info["model"].state_dict().items()})])
    torch.manual_seed(cfg.train.seed)  # the trainer seeds before building: rebuild the same initial model
    initial = build_model("classifier", 4, 32, cfg.model_args).state_dict()
    backbone = [k for k in initial if k.startswith("backbone.") and initial[k].is_floating_point()]
    assert all(torch.equal(seen[0][k], initial[k]) for k in backbone)
    assert not torch.equal(seen[0]["head.weight"], initial["head.weight"])
    assert not torch.equal(seen[1]["backbone.conv_stem.weight"], initial["backbone.conv_stem.weight"])
    assert not torch.equal(seen[1]["backbone.bn2.running_mean"], initial["backbone.bn2.running_mean"])


def test_loss_falls_and_predict_any_size():
    torch.manual_seed(0)
    model = tiny("scratch", pretrained="none", dropout=0.0)
    images, targets = torch.rand(2, 3, 64, 64), [Target(label=1), Target(label=2)]
    opt = torch.optim.AdamW(model.param_groups(3e-3, 0.0))
    losses = []
    for _ in range(15):
        loss = model.loss(images, targets)["cls"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]

    model.eval()
    odd = [torch.rand(3, 50, 90), torch.rand(3, 120, 70)]
    preds = model.predict(odd)
    assert len(preds) == 2 and all(p.scores.shape == (3,) for p in preds)
    assert all(float(p.scores.sum()) == pytest.approx(1.0, abs=1e-5) for p in preds)
    assert preds[0].label == int(preds[0].scores.argmax())
    # One image, a batch and a list give the same answer.
    single = model.predict(odd[0])[0].scores
    assert torch.allclose(single, preds[0].scores, atol=1e-5)
    batch = model.predict(torch.stack([odd[0][:, :50, :70], odd[1][:, :50, :70]]))
    listed = model.predict([odd[0][:, :50, :70], odd[1][:, :50, :70]])
    assert all(torch.allclose(a.scores, b.scores, atol=1e-5) for a, b in zip(batch, listed))


def test_registry_and_bad_settings():
    assert MODELS["efficientnet_lite0"].config is ClassifierConfig and MODELS["classifier"].task == "classify"
    with pytest.raises(ConfigError, match="transfer"):
        tiny("frozen")
    with pytest.raises(ConfigError, match="backbone"):
        Classifier(ClassifierConfig(num_classes=2, backbone="no_such_net", pretrained="none"))
    with pytest.raises(ConfigError, match="offline ImageNet weights"):
        Classifier(ClassifierConfig(num_classes=2, backbone="resnet18", pretrained="imagenet"))
    with pytest.raises(ConfigError, match="not a run folder"):
        load("no_such_model_name")
    with pytest.raises(ConfigError, match="model 'efficientnet_lite0' has no settings"):
        build_model("efficientnet_lite0", 2, 64, {"freeze": 1})


def test_cli_predict_model_name_prints_imagenet_top5(tmp_path, capsys):
    image = tmp_path / "coffee.jpg"
    Image.fromarray(np.asarray(skimage_data.coffee())).save(image, quality=95)
    assert main(["predict", "efficientnet_lite0", str(image), "--out", str(tmp_path / "out")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(str(image)))
    top5 = line.split(": ", 1)[1].split(", ")
    assert len(top5) == 5 and top5[0].startswith("espresso ")
    record = json.loads((tmp_path / "out" / "coffee.json").read_text())
    assert record["label"] == 967 and record["class"] == "espresso"
    assert (tmp_path / "out" / "coffee.png").is_file()


def test_head_is_linear_on_pooled_features():
    """The model is backbone -> pool -> linear: logits equal the head applied to ``features``."""
    model = tiny("finetune", pretrained="none").eval()
    x = torch.rand(2, 3, 64, 64)
    assert isinstance(model.head, nn.Linear) and model.head.in_features == model.backbone.num_features
    assert torch.allclose(model(x), model.head(model.features(x)), atol=1e-6)


def test_label_smoothing_matches_the_hand_computed_target():
    """Two classes, logits (2, 0), label 0, e = 0.1: the target is (0.95, 0.05), so the loss is
    -(0.95 log p0 + 0.05 log p1) with p = softmax(2, 0)."""
    model = tiny("scratch", pretrained="none", label_smoothing=0.1)
    logits = torch.tensor([[2.0, 0.0, -30.0]])  # a third class far away: e / 3 of the target lands there too
    p = logits.softmax(1)[0]
    e = 0.1
    hand = -((1 - e + e / 3) * p[0].log() + e / 3 * p[1].log() + e / 3 * p[2].log())
    from zir.models.classify.classifier import cross_entropy

    got = cross_entropy(logits, [Target(label=0)], model.cfg.label_smoothing)
    assert torch.allclose(got, hand, atol=1e-6)
    assert cross_entropy(logits, [Target(label=0)]) < got  # smoothing costs a confident, right answer
    with pytest.raises(ConfigError, match="label_smoothing"):
        tiny("scratch", pretrained="none", label_smoothing=1.0)

