"""The lecture's case for RoI Align (Mask R-CNN, section 3): RoI pooling rounds the RoI and its bins to
whole feature cells, so the features it pools come from a shifted, stretched region; RoI Align samples the
exact RoI bilinearly. A hand-built case on a feature map whose value is its own x coordinate makes the
offset a number: each bin's true mean is the x of its centre.
"""

from __future__ import annotations

import torch

from zir.ops import roi_align, roi_pool


def _ramp(height: int = 4, width: int = 12) -> torch.Tensor:
    """``(1, 1, H, W)`` with pixel ``x``'s value ``x + 0.5``: the continuous x of its centre (zir's boxes:
    pixel ``x`` spans ``[x, x + 1)``)."""
    return (torch.arange(width, dtype=torch.float32) + 0.5).expand(1, 1, height, width).contiguous()


def test_roi_pool_quantises_the_roi_and_roi_align_does_not():
    rois = torch.tensor([[0, 2.6, 0.0, 6.6, 4.0]])  # image 0, x1 y1 x2 y2: 4 px wide, starting mid-pixel
    true_means = torch.tensor([3.1, 4.1, 5.1, 6.1])  # four 1-px bins: centres 2.6 + 0.5, + 1.5, ...

    aligned = roi_align(_ramp(), rois, output_size=(1, 4), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(aligned.flatten(), true_means)

    # roi_pool: x1 -> round(2.6) = 3, x2 -> round(6.6) = 7 and inclusive, so 5 cells for 4 bins of 1.25:
    # bins [3, 5), [4, 6), [5, 7), [6, 8), each the max over its cells (by hand: 4.5, 5.5, 6.5, 7.5)
    pooled = roi_pool(_ramp(), rois, output_size=(1, 4), spatial_scale=1.0)
    assert pooled.flatten().tolist() == [4.5, 5.5, 6.5, 7.5]
    offset = pooled.flatten() - true_means
    assert torch.all(offset >= 1.0)  # every bin reads features more than a pixel to the right of its own


def test_the_offset_grows_with_the_feature_stride():
    """The same RoI on stride-4 and stride-16 maps (FPN levels): pooling reads the same rounded cells, so in
    input pixels its features come from at least one whole stride (4 or 16 px) away; RoI Align stays exact."""
    for stride in (4, 16):
        rois = torch.tensor([[0, 2.6 * stride, 0.0, 6.6 * stride, 4.0 * stride]])
        aligned = roi_align(_ramp(), rois, output_size=(1, 4), spatial_scale=1 / stride, sampling_ratio=2,
                            aligned=True)
        torch.testing.assert_close(aligned.flatten(), torch.tensor([3.1, 4.1, 5.1, 6.1]))
        pooled = roi_pool(_ramp(), rois, output_size=(1, 4), spatial_scale=1 / stride)
        assert pooled.flatten().tolist() == [4.5, 5.5, 6.5, 7.5]
        shift_px = (pooled.flatten() - aligned.flatten()) * stride
        assert torch.all(shift_px >= stride)


def test_mask_head_roi_op_chooses_the_mask_branch_pooler_and_refuses_others():
    import pytest

    from zir.errors import ConfigError
    from zir.models import build_model

    tiny = {"pretrained": "none", "fpn_channels": 16, "box_hidden": 32, "mask_channels": 16}
    default = build_model("mask_rcnn", 2, 64, tiny)
    pooled = build_model("mask_rcnn", 2, 64, {**tiny, "mask_roi_op": "pool"})
    assert default.heads["mask"].pooler.op == "align" and default.roi_heads.pooler.op == "align"
    assert pooled.heads["mask"].pooler.op == "pool" and pooled.roi_heads.pooler.op == "align"  # the box head keeps its own
    pooled.load_state_dict(default.state_dict())  # same weights: the op has none
    features = [torch.arange(16 * 8 * 8, dtype=torch.float32).reshape(1, 16, 8, 8)]
    boxes = [torch.tensor([[1.3, 1.3, 5.6, 6.7]])]
    head_a, head_p = default.heads["mask"], pooled.heads["mask"]
    head_a.pooler.strides = head_p.pooler.strides = [1]
    assert not torch.allclose(head_a.pooler(features, boxes), head_p.pooler(features, boxes))
    with pytest.raises(ConfigError, match="mask_roi_op"):
        build_model("mask_rcnn", 2, 64, {**tiny, "mask_head": {"roi_op": "bilinear"}})
