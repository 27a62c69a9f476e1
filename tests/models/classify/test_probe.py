"""transfer=features' head: multinomial logistic regression solved by L-BFGS, its L2 strength chosen by
stratified k-fold cross-validation, checked on hand-built separable and non-separable cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zir.config import load_config
from zir.engine.trainer import train
from zir.errors import ConfigError
from zir.models.classify.classifier import (
    L2_GRID,
    Classifier,
    ClassifierConfig,
    cross_validate,
    fit_logistic,
    stratified_folds,
)


def blobs(n_per_class: int, classes: int, dim: int, spread: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``classes`` Gaussian blobs at the corners of a simplex (centres 3 apart), ``spread`` their std."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.eye(classes, dim, dtype=torch.float64)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g, dtype=torch.float64), y


def test_fit_converges_to_the_stationary_point():
    """The solution's gradient of the penalised objective is ~0, recomputed independently here."""
    X, y = blobs(30, 3, 5, spread=2.0)
    W, b, info = fit_logistic(X, y, 3, l2=0.01)
    W, b = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
    loss = F.cross_entropy(X @ W.T + b, y) + 0.005 * (W * W).sum()
    loss.backward()
    assert W.grad.abs().max() < 1e-5 and b.grad.abs().max() < 1e-5 and info["grad_norm"] < 1e-5


def test_two_class_case_matches_the_closed_form_of_a_symmetric_problem():
    """Two points x = +1 (class 1) and x = -1 (class 0) in one dimension: by symmetry b = 0 and w solves
    -sigmoid(-w) + l2 w = 0; check against bisection on that equation."""
    X, y = torch.tensor([[1.0], [-1.0]], dtype=torch.float64), torch.tensor([1, 0])
    l2 = 0.1
    W, b, _ = fit_logistic(X, y, 2, l2)
    w = float(W[1, 0] - W[0, 0])  # the softmax's two rows: only their difference matters, penalised as ||W||^2
    lo, hi = 0.0, 50.0
    for _ in range(200):  # with W = [-w/2, w/2]: d/dw [log(1 + exp(-w)) + l2 w^2 / 4] = 0
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if -torch.sigmoid(torch.tensor(-mid)).item() + l2 * mid / 2 < 0 else (lo, mid)
    assert w == pytest.approx(lo, rel=1e-5) and abs(float(b[1] - b[0])) < 1e-6


def test_cross_validation_picks_a_weak_penalty_for_separable_data_and_a_strong_one_for_noise():
    X, y = blobs(25, 3, 8, spread=0.3)  # far apart: separable, a weak penalty fits sharper probabilities
    l2_sep, cv_sep = cross_validate(X, y, torch.arange(len(y)), 3, folds=5)
    assert cv_sep["cv_accuracy"] == 1.0 and l2_sep <= 1e-3 and cv_sep["folds"] == 5
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(75, 8, generator=g, dtype=torch.float64)  # labels unrelated to the features
    l2_noise, cv_noise = cross_validate(noise, y, torch.arange(len(y)), 3, folds=5)
    assert l2_noise == max(L2_GRID)  # the strongest penalty: predicting the class frequencies is best
    assert cv_noise["cv_loss"] > torch.log(torch.tensor(3.0)).item() - 0.05  # held out: no better than chance


def test_folds_are_stratified_and_keep_an_images_views_together():
    y = torch.tensor([0] * 10 + [1] * 5).repeat(2)  # 15 images, two views each
    groups = torch.arange(15).repeat(2)
    fold, k = stratified_folds(y, groups, 5)
    assert k == 5
    assert all(fold[i] == fold[i + 15] for i in range(15))  # both views in one fold
    for f in range(5):
        assert (y[fold == f] == 0).sum() == 4 and (y[fold == f] == 1).sum() == 2  # each class's share
    assert stratified_folds(y[:3], groups[:3], 5)[1] == 3  # fewer images than folds: fewer folds


def test_a_class_with_one_image_still_fits_and_warns():
    X, y = blobs(6, 3, 4, spread=0.3)
    keep = torch.cat([torch.arange(12), torch.tensor([12])])  # class 2 has one image
    with pytest.warns(UserWarning, match="fewer training images"):
        l2, cv = cross_validate(X[keep], y[keep], torch.arange(13), 3, folds=5)
    assert l2 in L2_GRID and cv["folds"] == 5
    with pytest.warns(UserWarning, match="not cross-validated"):
        assert cross_validate(X[:1], y[:1], torch.zeros(1, dtype=torch.int64), 3)[0] in L2_GRID


def test_solve_head_maps_the_standardised_solution_back_to_raw_features():
    model = Classifier(ClassifierConfig(num_classes=3, image_size=32, pretrained="none", transfer="features"))
    X, y = blobs(20, 3, model.backbone.num_features, spread=0.5)
    X = 5.0 * X + 2.0  # raw features with their own scale and offset
    stats = model.solve_head(X.float(), y, torch.arange(len(y)))
    model.eval()
    assert (model.classify(X.float()).argmax(1) == y).all() and stats["grad_norm"] < 1e-5


def test_views_belong_to_features():
    with pytest.raises(ConfigError, match="views=4 belongs to transfer=features"):
        load_config(overrides=["model=efficientnet_lite0", "transfer=finetune", "views=4"])


def test_a_class_folder_with_one_image_trains_and_warns(tmp_path):
    g = torch.Generator().manual_seed(0)
    for split, counts in (("train", {"a": 6, "b": 6, "c": 1}), ("val", {"a": 2, "b": 2, "c": 1})):
        for cls, n in counts.items():
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = (torch.rand(24, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    cfg = load_config(overrides=["model=efficientnet_lite0", "transfer=features", "pretrained=none",
                                 f"data={tmp_path / 'train'}", f"val_path={tmp_path / 'val'}", "image_size=32",
                                 "threads=1", f"project={tmp_path}"])
    with pytest.warns(UserWarning, match=r"classes \[2\] have fewer training images"):
        result = train(cfg, progress=False)
    assert result.epochs_done == 1 and "accuracy" in result.best_metrics


def test_flip_tta_averages_the_image_and_its_mirror():
    torch.manual_seed(0)
    plain = Classifier(ClassifierConfig(num_classes=3, image_size=32, pretrained="none")).eval()
    tta = Classifier(ClassifierConfig(num_classes=3, image_size=32, pretrained="none", tta=2)).eval()
    tta.load_state_dict(plain.state_dict())
    images = torch.rand(2, 3, 32, 32)
    expected = (plain(images).softmax(1) + plain(images.flip(-1)).softmax(1)) / 2
    got = torch.stack([p.scores for p in tta.predict(images)])
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, torch.stack([p.scores for p in plain.predict(images)]), atol=1e-4)
    with pytest.raises(ConfigError, match="tta must be 1"):
        ClassifierConfig(tta=4)


def test_features_mode_defaults_to_flip_tta_and_its_cached_head_scores_as_predict():
    assert ClassifierConfig(transfer="features").tta == 2 and ClassifierConfig(transfer="finetune").tta == 1
    assert ClassifierConfig(transfer="features", tta=1).tta == 1
    torch.manual_seed(0)
    model = Classifier(ClassifierConfig(num_classes=3, image_size=32, pretrained="none", transfer="features")).eval()
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():  # what the feature cache holds for validation: (B, 2, F), the images and their mirrors
        cached = torch.stack([model.features(images), model.features(images.flip(-1))], 1)
    expected = torch.stack([p.scores for p in model.predict(images)])
    got = torch.stack([p.scores for p in model.head_on_features().predict(cached)])
    assert torch.allclose(got, expected, atol=1e-6)
    plain = torch.stack([p.scores for p in model.head_on_features().predict(cached[:, 0])])
    assert not torch.allclose(plain, expected, atol=1e-4)
