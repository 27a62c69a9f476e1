"""Every registered model, through the interface the engine uses (timm-style loop over the registry):
``loss`` returns a dict of finite scalars whose sum gives every trainable parameter a gradient, and
``predict`` returns one prediction of the task's type per image, in that image's pixels, whatever its size.
"""

from __future__ import annotations

import pytest
import torch

from zir.data.contract import ClassPrediction, DetectionPrediction, PanopticPrediction, SemanticPrediction
from zir.data.synth import SynthDataset
from zir.engine.data import collate, eval_transform
from zir.models import MODELS, build_model, model_config

SIZE = 64
# Small settings per model so the whole loop stays fast; every model in MODELS must be listed here.
TINY: dict[str, dict] = {
    "convnet": {"width": 8, "depth": 2},
    "classifier": {"pretrained": "none"},
    "efficientnet_lite0": {"pretrained": "none"},
    "yolo_v1": {"backbone": "convnet", "width": 8, "S": 4, "hidden": 32, "neck": 32},
    "anchor_free": {"pretrained": "none", "neck_channels": 16, "head_convs": 1, "reg_max": 7},
    "faster_rcnn": {"pretrained": "none", "fpn_channels": 16, "box_hidden": 32},
    "rcnn": {"pretrained": "none", "crop_size": 32, "context": 4, "train_regions": 8, "ss_size": 64},
    "fast_rcnn": {"pretrained": "none", "box_hidden": 32, "ss_size": 64},
    "sliding_window": {"windows": [[16, 16]], "stride": 8, "scales": [1.0, 0.5], "input_size": 16, "level": 2,
                       "width": 8, "hidden": 16},
    "overfeat": {"window": 16, "scales": [1.0, 0.5], "level": 2, "width": 8, "hidden": 16},
    "fcn": {"pretrained": "none"},
    "unet": {"depth": 2, "width": 8},
    "mask_rcnn": {"pretrained": "none", "fpn_channels": 16, "box_hidden": 32, "mask_channels": 16},
    "panoptic_fpn": {"pretrained": "none", "fpn_channels": 16, "box_hidden": 32, "mask_channels": 16,
                     "semantic_channels": 16, "thing_classes": (True,) * 4 + (False,) * 2},
}
PREDICTION = {"classify": ClassPrediction, "detect": DetectionPrediction, "instance": DetectionPrediction,
              "segment": SemanticPrediction, "panoptic": PanopticPrediction}


def test_every_model_has_tiny_settings():
    assert set(MODELS) <= set(TINY), f"add tiny settings for {set(MODELS) - set(TINY)}"
    for name in MODELS:
        model_config(name, 2, SIZE, TINY[name])  # a ConfigError names any key the model does not know


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_backward_and_predict(name):
    spec = MODELS[name]
    torch.manual_seed(0)
    args = TINY[name]
    ds = SynthDataset(task=spec.task, n=2, seed=3, image_size=SIZE, transform=eval_transform(spec.task, SIZE))
    model = build_model(name, len(ds.classes), SIZE, args)
    batch = collate([ds[0], ds[1]])
    model.train()
    losses = model.loss(batch.images, batch.targets)
    assert isinstance(losses, dict) and losses
    for k, v in losses.items():
        assert v.ndim == 0 and torch.isfinite(v), k
    sum(losses.values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"

    model.eval()
    images = [torch.rand(3, 50, 70), torch.rand(3, 90, 40)]  # sizes the model was not trained at
    preds = model.predict(images)
    assert len(preds) == 2 and all(isinstance(p, PREDICTION[spec.task]) for p in preds)
    for p, im in zip(preds, images):
        H, W = im.shape[-2:]
        if isinstance(p, DetectionPrediction):
            assert p.boxes.shape[1:] == (4,) and len(p.boxes) == len(p.scores) == len(p.labels)
            if len(p.boxes):
                assert p.boxes[:, [0, 2]].min() >= 0 and p.boxes[:, [0, 2]].max() <= W + 1e-3
                assert p.boxes[:, [1, 3]].max() <= H + 1e-3
        elif isinstance(p, PanopticPrediction):
            assert p.ids.shape == (H, W) and set(p.ids.unique().tolist()) <= {0} | set(p.segment_classes())
        elif isinstance(p, SemanticPrediction):
            assert p.semantic.shape == (H, W) and p.semantic.dtype == torch.int64
        else:
            assert p.scores.shape == (len(ds.classes),)
            torch.testing.assert_close(p.scores.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_entry_says_how_the_model_is_fitted_and_the_model_can_be(name):
    """``ModelSpec.fitting`` is a function of the config alone; a model fitted on cached features has what
    the engine then calls (``features`` + ``head_on_features``, or ``training_features`` + ``fit_features``)."""
    spec = MODELS[name]
    cfg = model_config(name, 6 if spec.task == "panoptic" else 4, SIZE, TINY[name])
    fitting = spec.fitting(cfg)
    assert fitting in ("gradient", "features", "closed_form")
    calls = {"gradient": (), "features": ("features", "head_on_features"),
             "closed_form": ("training_features", "fit_features")}[fitting]
    model = spec.build(cfg)
    assert all(callable(getattr(model, c, None)) for c in calls), calls


def test_transfer_decides_how_the_classifier_is_fitted():
    for transfer, fitting in [("features", "features"), ("finetune", "gradient"), ("scratch", "gradient")]:
        cfg = model_config("classifier", 3, SIZE, {"pretrained": "none", "transfer": transfer})
        assert MODELS["classifier"].fitting(cfg) == fitting
    assert MODELS["rcnn"].fitting(model_config("rcnn", 3, SIZE)) == "closed_form"
    assert MODELS["convnet"].fitting(model_config("convnet", 3, SIZE)) == "gradient"
