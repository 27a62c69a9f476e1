"""R-CNN: the SVM solver and its hard-negative mining, the ridge box regressor, region labelling, the
closed-form fit on the engine's feature cache, predict's mapping and empty cases, and training through
the engine."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from zir.data.contract import DetectionPrediction, Target
from zir.data.synth import SynthDataset
from zir.engine.data import collate
from zir.engine.features import FEATURE_FILE, fit_closed_form
from zir.models.detect.rcnn import (
    RCNNConfig,
    build,
    fit_ridge,
    label_regions,
    solve_svm,
    svm_objective,
    train_svm,
)

pytest.importorskip("cv2.ximgproc")


def tiny(**kw):
    torch.manual_seed(0)
    args = dict(num_classes=4, pretrained="none", crop_size=32, context=4, train_regions=8, ss_size=48,
                initial_negatives=50)
    return build(RCNNConfig(**(args | kw)))


def lbfgs_minimum(x, y, cost):
    """Oracle: the same objective minimised by a generic solver."""
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=1000, tolerance_grad=1e-12, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        f = svm_objective(w, x, y, cost)
        f.backward()
        return f

    opt.step(closure)
    return float(svm_objective(w.detach(), x, y, cost))


@pytest.mark.parametrize("n", [20, 80])  # fewer and more samples than features: both Newton systems
def test_newton_svm_reaches_the_minimum(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 30, generator=g, dtype=torch.float64)
    y = torch.where(x[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0, 1.0, -1.0).double()
    cost = torch.full((n,), 0.5, dtype=torch.float64)
    w = solve_svm(x, y, cost)
    assert float(svm_objective(w, x, y, cost)) == pytest.approx(lbfgs_minimum(x, y, cost), rel=1e-7)


def mining_problem():
    """2-D features: positives around (2, 0); 200 easy negatives around (-3, 0) and 10 planted hard ones
    at (0.5, 0), between the classes, that a random start of 20 negatives is unlikely to hold."""
    g = torch.Generator().manual_seed(0)
    pos = torch.tensor([2.0, 0.0]) + 0.3 * torch.randn(30, 2, generator=g)
    easy = torch.tensor([-3.0, 0.0]) + 0.3 * torch.randn(200, 2, generator=g)
    hard = torch.tensor([0.5, 0.0]) + 0.05 * torch.randn(10, 2, generator=g)
    return pos.double(), torch.cat([easy, hard]).double(), hard.double()


def test_hard_negative_mining_adds_the_planted_negatives_and_reaches_the_full_svm():
    pos, neg, hard = mining_problem()
    C = 1.0
    w1, first = train_svm(pos, neg, C, initial=20, rounds=1, generator=torch.Generator().manual_seed(2))
    assert len(first) == 1 and first[0].negatives == 20 and first[0].added >= 10
    score = lambda x, w: x @ w[:-1] + 10.0 * w[-1]  # noqa: E731 - the bias is a feature of value 10
    assert (score(hard, w1) > 0).all()  # without them, the planted negatives are false positives

    w, history = train_svm(pos, neg, C, initial=20, rounds=8, generator=torch.Generator().manual_seed(2))
    assert history[0] == first[0]
    assert history[-1].added == 0 and len(history) >= 2  # stopped because no hard negative was left
    assert history[-1].negatives > 20 and history[-1].negatives < len(neg)  # easy ones never needed
    assert history[-1].objective < history[0].objective
    assert (score(hard, w) < 0).all() and (score(pos, w) > 0).all()
    # the mined SVM is the SVM trained on every negative at once
    x = torch.cat([pos, neg])
    x = torch.cat([x, torch.full((len(x), 1), 10.0, dtype=x.dtype)], dim=1)
    y = torch.cat([torch.ones(len(pos)), -torch.ones(len(neg))]).double()
    cost = torch.full((len(x),), C, dtype=torch.float64)
    assert history[-1].objective == pytest.approx(lbfgs_minimum(x, y, cost), rel=1e-6)


def test_ridge_recovers_a_linear_map_and_matches_the_augmented_least_squares():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g, dtype=torch.float64)
    W_true = torch.randn(6, 4, generator=g, dtype=torch.float64)
    b_true = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    W, b = fit_ridge(x, x @ W_true + b_true, lam=1e-9)
    torch.testing.assert_close(W, W_true)
    torch.testing.assert_close(b, b_true)
    # with a penalty: oracle = least squares on [x 1; sqrt(lam) I 0] (the bias is not penalised)
    y = x @ W_true + b_true + 0.1 * torch.randn(200, 4, generator=g, dtype=torch.float64)
    lam = 50.0
    A = torch.cat([torch.cat([x, torch.ones(200, 1, dtype=x.dtype)], 1),
                   torch.cat([lam**0.5 * torch.eye(6, dtype=x.dtype), torch.zeros(6, 1, dtype=x.dtype)], 1)])
    sol = torch.linalg.lstsq(A, torch.cat([y, torch.zeros(6, 4, dtype=x.dtype)])).solution
    W, b = fit_ridge(x, y, lam)
    torch.testing.assert_close(W, sol[:6])
    torch.testing.assert_close(b, sol[6])


def test_label_regions_by_hand():
    gt = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    labels = torch.tensor([2, 0])
    proposals = torch.tensor([[0.0, 0, 10, 5], [40, 40, 50, 50]])  # IoU 0.5 with box 0; nothing
    r = label_regions(proposals, gt, labels, num_classes=3)
    assert r.gt_label.tolist() == [2, 0, -1, -1]
    torch.testing.assert_close(r.class_iou, torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 0, 0.5], [0, 0, 0]]))
    assert r.best_class.tolist() == [2, 0, 2, 2] and r.best_iou.tolist() == [1.0, 1.0, 0.5, 0.0]
    empty = label_regions(proposals, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 3)
    assert empty.best_class.tolist() == [-1, -1] and empty.class_iou.abs().sum() == 0


def test_features_are_cached_on_disk_and_reused(tmp_path, monkeypatch):
    """Through the engine's one feature cache: every training image's regions once, then the closed-form
    fit; fitting again with the same key reads the file and gives the same model."""
    model = tiny()
    data = SynthDataset(task="detect", n=3, seed=1, image_size=48, max_objects=3, min_scale=0.2)
    path = tmp_path / FEATURE_FILE
    stats = fit_closed_form(model, data, torch.device("cpu"), path, "key", progress=False)
    cache = load_file(str(path))
    assert cache["features"].shape == (stats["regions"], model.svm_weight.shape[1])
    n_gt = sum(len(data[i]["labels"]) for i in range(len(data)))
    assert int((cache["gt_label"] >= 0).sum()) == n_gt  # every ground-truth box is a region
    assert model.svm_weight.abs().sum() > 0 and model.feature_scale != 1
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    refit = tiny()
    monkeypatch.setattr(refit, "cnn_features", lambda *a: pytest.fail("features were computed again"))
    again = fit_closed_form(refit, data, torch.device("cpu"), path, "key", progress=False)
    assert {k: v for k, v in again.items() if not k.endswith("_s")} == \
        {k: v for k, v in stats.items() if not k.endswith("_s")}
    for k, v in refit.state_dict().items():
        torch.testing.assert_close(v, weights[k])


def test_training_features_are_unscaled_and_fit_features_sets_the_scale():
    """The cached rows do not depend on the model's current feature scale (a refit starts from the raw
    CNN features); the fit scales them to mean norm feature_norm and predicts with that scale."""
    model = tiny()
    data = SynthDataset(task="detect", n=2, seed=1, image_size=48, max_objects=2, min_scale=0.3)
    batch = collate([data[0]])
    rows = model.training_features(batch.images[0], batch.targets[0], torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.feature_scale.fill_(7.0)
    again = model.training_features(batch.images[0], batch.targets[0], torch.Generator().manual_seed(0))
    assert torch.equal(rows["features"], again["features"]) and rows["features"].dtype == torch.float16
    assert set(rows) == {"features", "boxes", "gt_label", "class_iou", "best_class", "best_iou", "best_box"}
    assert all(len(v) == len(rows["boxes"]) for v in rows.values())
    model.fit_features(rows)
    scaled = model.embed(batch.images[0], rows["boxes"])
    torch.testing.assert_close(scaled.norm(dim=1).mean(), torch.tensor(model.cfg.feature_norm), rtol=2e-3, atol=0)
    empty = model.fit_features({})  # every training image dropped: nothing to fit, no error
    assert empty["regions"] == 0.0 and float(model.feature_scale) == 1.0


def test_predict_detects_its_proposals_in_input_pixels_and_regresses_after_nms():
    model = tiny()
    model.eval()
    given = torch.tensor([[10.0, 20.0, 60.0, 40.0], [12.0, 21.0, 60.0, 40.0], [100.0, 5.0, 140.0, 90.0]])
    model.search = lambda image: given.clone()
    with torch.no_grad():
        model.svm_bias.copy_(torch.tensor([-5.0, -5.0, 1.0, -5.0]))  # only class 2 passes the threshold
    (pred,) = model.predict([torch.rand(3, 100, 150)])
    assert isinstance(pred, DetectionPrediction) and pred.labels.tolist() == [2, 2]
    # the two first proposals overlap (IoU 0.96): NMS keeps one; zero regressors leave boxes as they were
    assert {tuple(b) for b in pred.boxes.tolist()} in ({tuple(given[0].tolist()), tuple(given[2].tolist())},
                                                        {tuple(given[1].tolist()), tuple(given[2].tolist())})
    torch.testing.assert_close(pred.scores, torch.sigmoid(torch.tensor([1.0, 1.0])))
    with torch.no_grad():  # a regressor that moves boxes right by a tenth of their width (t_x = 0.1)
        model.box_bias[2, 0] = 0.1
    (moved,) = model.predict([torch.rand(3, 100, 150)])
    torch.testing.assert_close(moved.boxes[:, 0] - pred.boxes[:, 0], 0.1 * (pred.boxes[:, 2] - pred.boxes[:, 0]))


def test_no_proposals_and_blank_images_give_empty_predictions():
    model = tiny()
    model.eval()
    model.search = lambda image: torch.zeros(0, 4)
    (pred,) = model.predict(torch.rand(1, 3, 40, 50))
    assert pred.boxes.shape == (0, 4) and pred.scores.shape == (0,) and pred.labels.dtype == torch.int64


def test_loss_on_an_image_without_objects():
    model = tiny()
    image = torch.rand(1, 3, 48, 48)
    target = Target(size=(48, 48))  # no object
    losses = model.loss(image, [target])
    assert set(losses) == {"svm", "box"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.svm_weight.grad is not None and model.box_weight.grad is not None


def test_zir_train_fits_in_closed_form_and_checkpoints(tmp_path):
    from zir.analysis.report import write_report
    from zir.config import load_config
    from zir.engine.trainer import train

    cfg = load_config(overrides=[
        "model=rcnn", "data=synth:detect", "synth_n=4", "image_size=48", "epochs=1", "threads=1",
        f"project={tmp_path}", "name=r", "model_args={pretrained: none, crop_size: 32, context: 4, "
        "train_regions: 8, ss_size: 48, initial_negatives: 50}"])
    result = train(cfg, progress=False, on_end=[write_report])
    run = result.run_dir
    assert (run / FEATURE_FILE).is_file() and (run / "report.html").is_file()
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert row["train/regions"] > 0 and "val/bbox/AP50" in row
    weights = load_file(str(run / "weights" / "last.safetensors"))
    assert weights["svm_weight"].abs().sum() > 0 and "feature_scale" in weights


def test_an_image_where_selective_search_finds_nothing_gives_no_detections():
    model = tiny()
    model.eval()
    (pred,) = model.predict([torch.rand(3, 1, 1)])  # a one-pixel image: no region of 2 pixels or more
    assert pred.boxes.shape == (0, 4) and pred.scores.shape == (0,)
