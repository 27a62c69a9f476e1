"""FCN: any input size gives logits of that size in every variant, bilinear start, gradients, training."""

import pytest
import torch
import torch.nn.functional as F

from zir.data.contract import SemanticPrediction, Target
from zir.models import MODELS, build_model
from zir.ops.transposed import bilinear_kernel


def fcn(variant: str = "8s", num_classes: int = 3, image_size: int = 64):
    torch.manual_seed(0)
    return build_model("fcn", num_classes, image_size, {"variant": variant, "pretrained": "none"})


def test_registered_for_segment():
    assert MODELS["fcn"].task == "segment"


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_output_has_the_input_size(variant):
    model = fcn(variant).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 300, 417)).shape == (1, 3, 300, 417)
        assert model(torch.rand(2, 3, 33, 65)).shape == (2, 3, 33, 65)


def test_upsampling_starts_as_bilinear_and_finer_scores_at_zero():
    model = fcn("8s")
    w = model.up_final.weight  # (C, C, 16, 16): stride 8
    assert w.shape == (3, 3, 16, 16)
    for c in range(3):
        torch.testing.assert_close(w[c, c], bilinear_kernel(16))
    assert w[0, 1].abs().sum() == 0  # channels do not mix
    for s in ("16", "8"):
        assert model.score[s].weight.abs().sum() == 0


def test_every_parameter_gets_a_gradient():
    model = fcn("8s")
    model.train()
    images = torch.rand(2, 3, 64, 64)
    targets = [Target(semantic=torch.randint(0, 3, (64, 64)), size=(64, 64)) for _ in range(2)]
    sum(model.loss(images, targets).values()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing


def test_padding_is_ignored_in_the_loss():
    model = fcn("32s").eval()  # eval: BatchNorm is frozen anyway; the loss only sees the first image's pixels
    image = torch.rand(1, 3, 40, 50)
    target = Target(semantic=torch.randint(0, 3, (40, 50)), size=(40, 50))
    padded = torch.zeros(1, 3, 64, 64)
    padded[..., :40, :50] = image
    logits = model(padded)
    expected = F.cross_entropy(logits[..., :40, :50], target.semantic[None])
    torch.testing.assert_close(model.loss(padded, [target])["ce"], expected)


def test_predict_maps_back_to_the_image_size():
    model = fcn("16s", image_size=64).eval()
    preds = model.predict([torch.rand(3, 50, 70), torch.rand(3, 130, 90), torch.zeros(3, 64, 64)])
    assert all(isinstance(p, SemanticPrediction) for p in preds)
    assert [tuple(p.semantic.shape) for p in preds] == [(50, 70), (130, 90), (64, 64)]
    assert preds[0].semantic.dtype == torch.int64
    torch.testing.assert_close(preds[1].scores.sum(0), torch.ones(130, 90))


def test_loss_falls_on_one_image():
    model = fcn("8s", num_classes=2)
    model.train()
    image = torch.zeros(1, 3, 64, 64)
    image[..., 16:48, 16:48] = 1.0
    semantic = torch.zeros(64, 64, dtype=torch.int64)
    semantic[16:48, 16:48] = 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = model.loss(image, [Target(semantic=semantic, size=(64, 64))])["ce"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_tta_mirror_mean_at_the_image_size():
    model = fcn("8s", image_size=64).eval()
    image = torch.rand(3, 50, 70)
    plain = model.predict([image, image.flip(-1)])
    model.cfg.tta = 2
    pred = model.predict([image])[0]
    assert pred.scores.shape == (3, 50, 70)
    torch.testing.assert_close(pred.scores, (plain[0].scores + plain[1].scores.flip(-1)) / 2)
