"""Backbones: cutting off the blocks after the last map taken changes none of the maps taken."""

from __future__ import annotations

import torch

from zir.models.backbones import build_backbone


def test_dropping_unused_blocks_keeps_the_maps_taken():
    full = build_backbone("efficientnet_lite0", "none", (2, 3), keep_unused_blocks=True).eval()
    cut = build_backbone("efficientnet_lite0", "none", (2, 3)).eval()
    _, unexpected = cut.load_state_dict(full.state_dict(), strict=False)
    assert unexpected and all(k.startswith(("body.blocks.5.", "body.blocks.6.")) for k in unexpected)
    # EfficientNet-Lite0's seven stages: the stride-16 map is the fifth's output, the stride-32 stages go
    assert len(full.body.blocks) == 7 and len(cut.body.blocks) == 5
    assert sum(p.numel() for p in cut.parameters()) < sum(p.numel() for p in full.parameters()) / 2
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(full(x), cut(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (cut.channels, cut.strides) == ([40, 112], [8, 16])


def test_a_backbone_taking_its_last_stage_keeps_every_block():
    b = build_backbone("efficientnet_lite0", "none", (2, 3, 4))
    assert len(b.body.blocks) == 7
