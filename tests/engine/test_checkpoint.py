"""Loading weights: old parameter names are mapped onto new ones; what still does not fit is a CheckpointError
that says how to convert, never a KeyError or RuntimeError from inside torch."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from zir.engine.checkpoint import load_weights, rename_keys
from zir.errors import CheckpointError
from zir.models import MODELS, build_model


class Old(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.mask_head = nn.Sequential(nn.Linear(4, 2))


class New(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.heads = nn.ModuleDict({"mask": nn.Sequential(nn.Linear(4, 2))})


def test_rename_keys_maps_prefixes_only():
    state = {"mask_head.0.weight": torch.ones(1), "body.weight": torch.zeros(1), "x.mask_head.w": torch.ones(2)}
    out = rename_keys(state, {"mask_head.": "heads.mask."})
    assert list(out) == ["heads.mask.0.weight", "body.weight", "x.mask_head.w"]
    assert out["heads.mask.0.weight"] is state["mask_head.0.weight"]


def test_old_names_load_into_the_new_module_tree(tmp_path):
    torch.manual_seed(0)
    old = Old()
    save_file({k: v.contiguous() for k, v in old.state_dict().items()}, str(tmp_path / "w.safetensors"))
    new = New()
    load_weights(new, tmp_path / "w.safetensors", {"mask_head.": "heads.mask."})
    torch.testing.assert_close(new.heads.mask[0].weight, old.mask_head[0].weight)
    torch.testing.assert_close(new.body.bias, old.body.bias)
    with pytest.raises(CheckpointError, match=r"missing \['heads.mask.0.weight'.*unexpected \['mask_head.0.bias', 'mask_head.0.weight'"
                                              r".*ModelSpec.renames"):
        load_weights(New(), tmp_path / "w.safetensors")  # without the mapping


def test_other_shapes_are_a_checkpoint_error_not_a_torch_error(tmp_path):
    state = {k: v.contiguous() for k, v in New().state_dict().items()}
    state["body.weight"] = torch.zeros(5, 3)
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=r"other shapes \['body.weight \(5, 3\) \(model: \(4, 3\)\)'\]"):
        load_weights(New(), tmp_path / "w.safetensors")


def test_registry_renames_cover_every_parameter_of_the_composed_detectors():
    """The old module tree (``mask_head``, ``semantic_head`` beside the detector's parts) maps onto the new
    one (``heads.mask``, ``heads.semantic``) name for name."""
    args = {"pretrained": "none", "fpn_channels": 8, "box_hidden": 16, "mask_channels": 8, "semantic_channels": 8}
    model = build_model("panoptic_fpn", 3, 64, {**args, "thing_classes": [True, True, False]})
    new = set(model.state_dict())
    old = {k.replace("heads.mask.", "mask_head.").replace("heads.semantic.", "semantic_head.") for k in new}
    assert set(rename_keys(dict.fromkeys(old), MODELS["panoptic_fpn"].renames)) == new


def test_weights_trained_on_a_frozen_pretrained_backbone_load_for_prediction(tmp_path):
    """Training freezes the ImageNet backbone's BatchNorm (FrozenBatchNorm2d: no num_batches_tracked); zir.load
    builds the model without pretrained weights (plain BatchNorm) and must still take the file. Found on a
    GPU smoke run: every pretrained detector's run failed to load when missing keys were counted by hand."""
    from zir.engine.checkpoint import save_weights

    args = {"fpn_channels": 16, "box_hidden": 32}
    trained = build_model("faster_rcnn", 2, 64, {**args, "pretrained": "imagenet"})
    path = tmp_path / "best.safetensors"
    save_weights(trained, path, {"note": "test"})
    assert not any(k.endswith("num_batches_tracked") for k in trained.state_dict() if k.startswith("backbone."))
    rebuilt = build_model("faster_rcnn", 2, 64, {**args, "pretrained": "none"})
    load_weights(rebuilt, path)
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, rtol=0, atol=0)
