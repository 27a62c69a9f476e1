"""R-CNN (Girshick et al. 2014): regions with CNN features, classified by linear SVMs.

The lecture's four parts, each its own piece here::

    1. image -> selective search proposals (~2000)                zir.models.detect.proposals (OpenCV contrib)
    2. each proposal, with 16 px of context, warped to a fixed square (anisotropic, section 2.1)
       -> the pretrained CNN (frozen) -> one feature vector        RCNN.embed
    3. one linear SVM per class on the features                   train_svm (hard-negative mining)
    4. a linear (ridge) regressor per class refines the box       fit_ridge (appendix C)
    predict: scores -> threshold, per-class NMS -> box regression of the kept boxes -> input pixels

Training is not gradient descent: the CNN is fixed, so the feature vector of every training region is
computed once and cached, then the SVMs and regressors are fitted on the cache (seconds), as in the
paper (section 2.3). The registry entry says so (``fitting="closed_form"``): the engine caches
:meth:`RCNN.training_features` of every training image once (``RUN/features.safetensors``) and calls
:meth:`RCNN.fit_features` instead of its gradient loop, then evaluates and checkpoints as for any model
(the SVM and regressor weights are parameters, so they are in the safetensors checkpoint). This file
holds the math only: what a region's feature is, and the solvers as functions of feature tensors.

* SVMs (section 2.3): class ``c``'s positives are its ground-truth boxes, its negatives the regions with
  IoU < 0.3 with every box of class ``c``; regions in between are ignored. The SVM is the L2-loss linear
  SVM (squared hinge, liblinear's default primal) solved exactly by Newton's method; there are far too
  many negatives, so training starts from a random subset and adds the negatives it scores above the
  margin (``> -1``: "hard") round after round until none is left (Felzenszwalb et al.'s hard-negative
  mining). When no hard negative is left the solution is that of the SVM on all negatives.
* Features are scaled so their mean L2 norm is 20 (the R-CNN code's ``feat_norm_mean``), the class
  weight of positives is 2 and the bias is a constant feature of 10 (as the R-CNN code's liblinear call).
* Box regression (appendix C): for proposals with IoU >= 0.6 with a box of class ``c``, ridge regression
  from the features to that box's deltas ``(t_x, t_y, t_w, t_h)`` (``zir.ops.coder.BoxCoder``, unit
  weights), closed form, lambda 1000.
* Scores are SVM margins; predictions report ``sigmoid(margin)`` so they lie in (0, 1) as other
  detectors' (monotone: the ranking, hence AP, is the margins').

``loss`` exists for the common interface (and the registry's tests): the same squared-hinge and ridge
objectives on the regions of one batch, so gradient training would also work, only slowly.

The CNN is EfficientNet-Lite0 (ImageNet, offline) with its classifier removed, giving its pooled 1280-d
features (the paper's AlexNet fc7 gives 4096), in place of fine-tuning (section 2.3 fine-tunes the CNN on
warped regions first; here the pretrained features are used as they are).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zir.data.contract import DetectionPrediction, Target
from zir.errors import ConfigError
from zir.models.backbones import create_timm
from zir.models.base import ZirModel
from zir.models.detect.proposals import MODES, ProposalCache, SelectiveSearch
from zir.models.detect.structures import ground_truth
from zir.models.detect.transform import image_list, unpad
from zir.ops import roi_align
from zir.ops.boxes import batched_nms, clip, iou
from zir.ops.coder import BoxCoder


@dataclass
class RCNNConfig:
    """Attributes:
    num_classes: object classes K.
    backbone, pretrained: the CNN (a timm name; ``imagenet`` offline weights, ``timm`` or ``none``).
    crop_size: side of the square each region is warped to (227 in the paper).
    context: pixels of image context around the region in the warped crop (16 of 227 in the paper).
    ss_mode, ss_size, max_proposals: selective search (``zir.models.detect.proposals``).
    train_regions: per training image, besides its ground-truth boxes, at most this many proposals with
        IoU >= ``reg_iou`` (for the regressors) and this many others (the SVMs' negatives), drawn at
        random, get their features cached (all of them would cost ~2000 CNN passes per image).
    neg_iou: a region is a negative of class c below this IoU with every box of class c (0.3).
    svm_C, svm_pos_weight: SVM cost and class weight of positives.
    initial_negatives: negatives per class in the first SVM round (a random subset of the cache).
    mining_rounds: most SVM rounds of hard-negative mining.
    reg_iou, ridge_lambda: proposals used for the box regressors (IoU >= 0.6) and their ridge penalty.
    feature_norm: the features' mean L2 norm after scaling (20).
    chunk: regions per CNN batch.
    score_thresh: detections need ``sigmoid(margin)`` above this; nms_iou: per-class NMS IoU (0.3);
    detections_per_img: the most kept.
    """

    num_classes: int = 20
    backbone: str = "efficientnet_lite0"
    pretrained: str = "imagenet"
    crop_size: int = 96
    context: int = 8
    ss_mode: str = "fast"
    ss_size: int = 256
    max_proposals: int = 2000
    train_regions: int = 32
    neg_iou: float = 0.3
    svm_C: float = 1e-3
    svm_pos_weight: float = 2.0
    initial_negatives: int = 2000
    mining_rounds: int = 8
    reg_iou: float = 0.6
    ridge_lambda: float = 1000.0
    feature_norm: float = 20.0
    chunk: int = 128
    score_thresh: float = 0.05
    nms_iou: float = 0.3
    detections_per_img: int = 100


SVM_BIAS_FEATURE = 10.0  # the bias as a constant feature of this value, regularised with the weights


# --------------------------------------------------------------------------------------------------
# Part 3: linear SVMs with hard-negative mining


def svm_objective(w: Tensor, x: Tensor, y: Tensor, cost: Tensor) -> Tensor:
    """The L2-loss SVM primal ``0.5 |w|^2 + sum_i cost_i max(0, 1 - y_i w.x_i)^2``.

    Args:
        w: ``(F + 1,)`` weights, the bias last; x: ``(N, F + 1)`` features with the bias feature;
        y: ``(N,)`` labels in {-1, +1}; cost: ``(N,)`` per-sample ``C`` (times the class weight).
    """
    margin = (1 - y * (x @ w)).clamp(min=0)
    return 0.5 * w @ w + (cost * margin**2).sum()


def solve_svm(x: Tensor, y: Tensor, cost: Tensor, w0: Tensor | None = None, max_iter: int = 50,
              tol: float = 1e-6) -> Tensor:
    """Minimise :func:`svm_objective` by Newton's method (Keerthi & DeCoste 2005): on the samples inside
    the margin the objective is quadratic, so each step solves ``(I + 2 X_a^T C X_a) d = grad``; a
    backtracking line search keeps every step downhill. Returns ``w (F + 1,)``."""
    w = x.new_zeros(x.shape[1]) if w0 is None else w0.clone()
    f = svm_objective(w, x, y, cost)
    for _ in range(max_iter):
        margin = 1 - y * (x @ w)
        a = margin > 0  # the samples that count: inside the margin or misclassified
        xa, ca = x[a], cost[a]
        grad = w - 2 * xa.T @ (ca * y[a] * margin[a])
        if grad.norm() <= tol * max(1.0, float(w.norm())):
            break
        step = _newton_step(xa, 2 * ca, grad)
        t = 1.0
        while True:  # Armijo backtracking: the objective is convex and piecewise quadratic
            w_new = w - t * step
            f_new = svm_objective(w_new, x, y, cost)
            if f_new <= f - 1e-4 * t * (grad @ step) or t < 1e-8:
                break
            t /= 2
        if f - f_new <= tol * max(1.0, float(f)):
            w, f = w_new, f_new
            break
        w, f = w_new, f_new
    return w


def _newton_step(xa: Tensor, d: Tensor, grad: Tensor) -> Tensor:
    """``(I + xa^T diag(d) xa)^-1 grad`` for ``xa (n, F)``: with fewer samples than features, through
    the ``(n, n)`` system of the Woodbury identity instead of the ``(F, F)`` one."""
    n, F_ = xa.shape
    if n >= F_:
        return torch.linalg.solve(torch.eye(F_, dtype=xa.dtype, device=xa.device) + (xa.T * d) @ xa, grad)
    return grad - xa.T @ torch.linalg.solve(torch.diag(1 / d) + xa @ xa.T, xa @ grad)


class MiningRound(NamedTuple):
    """One round of :func:`train_svm`: negatives it trained on, hard ones it then added, and the
    objective on *all* negatives (what mining approaches)."""

    negatives: int
    added: int
    objective: float


def train_svm(pos: Tensor, neg: Tensor, C: float, pos_weight: float = 1.0, initial: int = 2000,
              rounds: int = 8, generator: torch.Generator | None = None) -> tuple[Tensor, list[MiningRound]]:
    """A linear SVM for one class with hard-negative mining (R-CNN section 2.3).

    Round 1 trains on the positives and ``initial`` random negatives; every round then scores all
    negatives and adds those not yet used whose score is above ``-1`` (inside the margin: they would
    change the solution), warm-starting the next round, until none is left or ``rounds`` are done.

    Args:
        pos: ``(P, F)`` positive features; neg: ``(M, F)`` the negative pool.
        C, pos_weight: cost of a margin violation and the extra weight of positives.

    Returns:
        ``(w (F + 1,) with the bias last, one MiningRound per round)``; score ``x.w[:F] + w[F]``.
    """
    F_ = pos.shape[1]
    with_bias = lambda t: torch.cat([t, t.new_full((len(t), 1), SVM_BIAS_FEATURE)], dim=1)  # noqa: E731
    pos, neg = with_bias(pos), with_bias(neg)
    active = torch.zeros(len(neg), dtype=torch.bool)
    active[torch.randperm(len(neg), generator=generator)[:initial]] = True
    all_y = torch.cat([pos.new_ones(len(pos)), -pos.new_ones(len(neg))])
    all_cost = torch.cat([pos.new_full((len(pos),), C * pos_weight), pos.new_full((len(neg),), C)])
    w, history = None, []
    for _ in range(rounds):
        idx = torch.cat([torch.arange(len(pos)), len(pos) + torch.where(active)[0]])
        x_all = torch.cat([pos, neg])
        w = solve_svm(x_all[idx], all_y[idx], all_cost[idx], w)
        hard = (neg @ w > -1) & ~active
        history.append(MiningRound(int(active.sum()), int(hard.sum()),
                                   float(svm_objective(w, x_all, all_y, all_cost))))
        if not hard.any():
            break
        active |= hard
    if w is None:
        w = pos.new_zeros(F_ + 1)
    return w, history


# --------------------------------------------------------------------------------------------------
# Part 4: ridge box regression


def fit_ridge(x: Tensor, y: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """Ridge regression in closed form, bias not penalised: ``x (N, F)``, ``y (N, T)`` ->
    ``(W (F, T), b (T,))`` minimising ``|x W + b - y|^2 + lam |W|^2``."""
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    W = torch.linalg.solve(xc.T @ xc + lam * torch.eye(x.shape[1], dtype=x.dtype, device=x.device),
                           xc.T @ (y - my))
    return W, my - mx @ W


# --------------------------------------------------------------------------------------------------
# Training regions of one image


class Regions(NamedTuple):
    """The labelled regions of one training image (ground-truth boxes first, then proposals).

    Attributes:
        boxes: float32 ``(R, 4)`` XYXY in the image's pixels.
        gt_label: int64 ``(R,)``: the class of a ground-truth box, -1 for a proposal.
        class_iou: float32 ``(R, K)``: IoU with the best box of each class (0 where it has none).
        best_class: int64 ``(R,)`` the class of the box it overlaps most (-1: no box).
        best_iou: float32 ``(R,)`` that IoU; best_box: float32 ``(R, 4)`` that box.
    """

    boxes: Tensor
    gt_label: Tensor
    class_iou: Tensor
    best_class: Tensor
    best_iou: Tensor
    best_box: Tensor


def label_regions(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, num_classes: int) -> Regions:
    """Ground-truth boxes plus ``proposals (N, 4)``, each with its overlaps (see :class:`Regions`)."""
    boxes = torch.cat([gt_boxes, proposals.to(gt_boxes)])
    gt_label = torch.cat([gt_labels, gt_labels.new_full((len(proposals),), -1)])
    R = len(boxes)
    class_iou = boxes.new_zeros((R, num_classes))
    if len(gt_boxes) == 0:
        return Regions(boxes, gt_label, class_iou, gt_label.new_full((R,), -1), boxes.new_zeros(R),
                       boxes.new_zeros((R, 4)))
    overlaps = iou(boxes, gt_boxes)  # (R, G)
    for c in gt_labels.unique():
        class_iou[:, c] = overlaps[:, gt_labels == c].max(dim=1).values
    best_iou, best = overlaps.max(dim=1)
    return Regions(boxes, gt_label, class_iou, gt_labels[best], best_iou, gt_boxes[best])


def sample_regions(regions: Regions, n_gt: int, reg_iou: float, n: int,
                   generator: torch.Generator | None = None) -> Regions:
    """Keep the ground truth, ``n`` random proposals with IoU >= ``reg_iou`` (the regressors' data) and
    ``n`` random others (the SVMs' negatives)."""
    R = len(regions.boxes)
    is_prop = torch.arange(R) >= n_gt
    close = is_prop & (regions.best_iou >= reg_iou)
    picked = [torch.where(~is_prop)[0]]
    for group in (torch.where(close)[0], torch.where(is_prop & ~close)[0]):
        picked.append(group[torch.randperm(len(group), generator=generator)[:n]])
    keep = torch.cat(picked).sort().values
    return Regions(*(t[keep] for t in regions))


# --------------------------------------------------------------------------------------------------
# The model


class RCNN(ZirModel):
    """Selective search, a frozen CNN on each warped region, per-class linear SVMs and box regressors.

    ``predict`` takes float images in [0, 1], ``(B, 3, H, W)`` or a list of ``(3, h, w)`` of any size;
    regions are cropped from the image as given, so there is no working frame.
    """

    task = "detect"

    def __init__(self, cfg: RCNNConfig, cnn: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.cfg, self.cnn = cfg, cnn.requires_grad_(False).eval()  # fixed: see train()
        self.set_normalization(mean, std)
        K, F_ = cfg.num_classes, cnn.num_features
        self.svm_weight = nn.Parameter(torch.zeros(K, F_))  # part 3: one SVM per class
        self.svm_bias = nn.Parameter(torch.zeros(K))
        self.box_weight = nn.Parameter(torch.zeros(K, F_, 4))  # part 4: one ridge regressor per class
        self.box_bias = nn.Parameter(torch.zeros(K, 4))
        self.register_buffer("feature_scale", torch.tensor(1.0))  # features * this: mean norm feature_norm
        self.search = SelectiveSearch(cfg.ss_mode, cfg.ss_size, cfg.max_proposals)
        self.train_proposals = ProposalCache(self.search)
        self.coder = BoxCoder((1.0, 1.0, 1.0, 1.0))  # R-CNN's targets are unscaled (appendix C)

    def train(self, mode: bool = True) -> RCNN:
        super().train(mode)
        self.cnn.eval()  # a fixed feature extractor: BatchNorm statistics and dropout never change
        return self

    def embed(self, image: Tensor, boxes: Tensor) -> Tensor:
        """Part 2: ``image (3, H, W)`` in [0, 1], ``boxes (N, 4)`` in its pixels -> features ``(N, F)``,
        scaled as the SVMs and regressors were fitted (see :meth:`cnn_features`)."""
        return self.cnn_features(image, boxes) * self.feature_scale

    def cnn_features(self, image: Tensor, boxes: Tensor) -> Tensor:
        """The CNN's features ``(N, F)`` of ``boxes (N, 4)`` in ``image (3, H, W)``, before scaling.

        Each box grows so that after warping to ``crop_size`` it has ``context`` pixels of image on each
        side (section 2.1, "warp" with p = 16); outside the image is the mean colour (0 after
        normalising). RoI Align with adaptive sampling does the crop and anisotropic resize at once and
        averages over the pixels of a large box (an antialiased shrink).
        """
        S, p = self.cfg.crop_size, self.cfg.context
        if len(boxes) == 0:
            return image.new_zeros((0, self.svm_weight.shape[1]))
        x = self.normalize(image[None].float())
        grow = S / (S - 2 * p)
        centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2 * grow
        rois = torch.cat([boxes.new_zeros((len(boxes), 1)), centre - half, centre + half], dim=1).float()
        out = []
        with torch.no_grad():
            for chunk in rois.split(self.cfg.chunk):
                crops = roi_align(x, chunk, S, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
                out.append(self.cnn(crops).float())
        return torch.cat(out)

    def regress(self, features: Tensor, boxes: Tensor, labels: Tensor) -> Tensor:
        """Part 4: each box refined by its class's regressor: ``(N, F)``, ``(N, 4)``, ``(N,)`` -> ``(N, 4)``."""
        deltas = torch.einsum("nf,nft->nt", features, self.box_weight[labels]) + self.box_bias[labels]
        return self.coder.decode(deltas, boxes)

    def scores(self, features: Tensor) -> Tensor:
        """Part 3: SVM margins ``(N, K)``."""
        return features @ self.svm_weight.T + self.svm_bias

    def regions(self, image: Tensor, target: Target, generator: torch.Generator | None = None) -> Regions:
        """One training image's sampled, labelled regions (cached proposals + ground truth): ``image``
        ``(3, h, w)`` and its target, in the image's own pixels (R-CNN has no working frame)."""
        gt = ground_truth(target, target.size)
        labelled = label_regions(self.train_proposals(image).to(image.device), gt.boxes, gt.labels,
                                 self.cfg.num_classes)
        return sample_regions(labelled, len(gt.boxes), self.cfg.reg_iou, self.cfg.train_regions, generator)

    def loss(self, images: Tensor, targets: list[Target]) -> dict[str, Tensor]:
        """``{"svm", "box"}`` on a batch's regions: the squared hinge (per class: positives its
        ground-truth boxes, negatives IoU < ``neg_iou``) and the regressors' mean squared error."""
        feats, regs = [], []
        for im, t in zip(unpad(images, [t.size for t in targets]), targets):
            r = self.regions(im, t)
            feats.append(self.embed(im, r.boxes))
            regs.append(r)
        x = torch.cat(feats)
        r = Regions(*(torch.cat(ts) for ts in zip(*regs)))
        K = self.cfg.num_classes
        y = torch.where(r.gt_label[:, None] == torch.arange(K, device=x.device), 1.0, -1.0)  # (R, K)
        use = (y > 0) | (r.class_iou < self.cfg.neg_iou)
        cost = torch.where(y > 0, self.cfg.svm_pos_weight, 1.0)
        margin = (1 - y * self.scores(x)).clamp(min=0)
        svm = (cost * margin**2 * use).sum() / max(int(use.sum()), 1)
        fg = torch.where((r.best_iou >= self.cfg.reg_iou) & (r.best_class >= 0))[0]
        deltas = torch.einsum("nf,nft->nt", x[fg], self.box_weight[r.best_class[fg]]) + self.box_bias[r.best_class[fg]]
        targets_ = self.coder.encode(r.best_box[fg], r.boxes[fg])
        box = F.mse_loss(deltas, targets_, reduction="sum") / max(len(fg), 1)
        box = box + 0 * (self.box_weight.sum() + self.box_bias.sum())  # without matches too, a gradient for all
        return {"svm": svm, "box": box}

    # ----------------------------------------------------------------------------------------------
    # Training in closed form (the engine caches training_features once, then calls fit_features)

    def training_features(self, image: Tensor, target: Target, generator: torch.Generator) -> dict[str, Tensor]:
        """Parts 1-2 on one training image ``(3, H, W)`` in [0, 1]: its sampled, labelled regions and
        their CNN features, unscaled (``fit_features`` sets the scale from all of them).

        Returns ``{"features" (R, F) float16, "boxes", "gt_label", "class_iou", "best_class", "best_iou",
        "best_box"}`` (see :class:`Regions`), on the CPU.
        """
        r = self.regions(image, target, generator)
        return {"features": self.cnn_features(image, r.boxes).half().cpu(),
                **{name: value.cpu() for name, value in r._asdict().items()}}

    def fit_features(self, features: dict[str, Tensor]) -> dict[str, float]:
        """Parts 3 and 4 from the training regions of every image (:meth:`training_features`
        concatenated): scale the features to mean norm ``feature_norm``, then per class an SVM with
        hard-negative mining and a ridge box regressor; the solutions become the model's parameters.

        Returns:
            statistics: regions, the SVMs' mean final objective, hard negatives added, the regressors'
            training error.
        """
        cfg, K = self.cfg, self.cfg.num_classes
        cache = features or self._no_regions()
        raw = cache["features"].float()
        norms = raw.norm(dim=1)
        scale = cfg.feature_norm / float(norms.mean()) if len(raw) and float(norms.mean()) > 0 else 1.0
        x = raw * scale
        objectives, added, box_errors = [], 0, []
        W, b = torch.zeros(K, x.shape[1]), torch.full((K,), -SVM_BIAS_FEATURE)
        BW, Bb = torch.zeros(K, x.shape[1], 4), torch.zeros(K, 4)
        for c in range(K):
            pos = x[cache["gt_label"] == c]
            neg = x[(cache["class_iou"][:, c] < cfg.neg_iou) & (cache["gt_label"] != c)]
            if len(pos) and len(neg):
                w, history = train_svm(pos, neg, cfg.svm_C, cfg.svm_pos_weight, cfg.initial_negatives,
                                       cfg.mining_rounds, torch.Generator().manual_seed(c))
                W[c], b[c] = w[:-1], w[-1] * SVM_BIAS_FEATURE
                objectives.append(history[-1].objective)
                added += history[-1].negatives - history[0].negatives
            fg = torch.where((cache["best_class"] == c) & (cache["best_iou"] >= cfg.reg_iou))[0]
            if len(fg) > 1:
                targets = self.coder.encode(cache["best_box"][fg], cache["boxes"][fg])
                BW[c], Bb[c] = fit_ridge(x[fg], targets, cfg.ridge_lambda)
                box_errors.append(float(((x[fg] @ BW[c] + Bb[c] - targets) ** 2).sum(1).mean()))
        with torch.no_grad():
            self.feature_scale.fill_(scale)
            self.svm_weight.copy_(W)
            self.svm_bias.copy_(b)
            self.box_weight.copy_(BW)
            self.box_bias.copy_(Bb)
        return {"regions": float(len(x)), "svm_objective": sum(objectives) / max(len(objectives), 1),
                "hard_negatives": float(added), "box_mse": sum(box_errors) / max(len(box_errors), 1)}

    def _no_regions(self) -> dict[str, Tensor]:
        """The rows of a training set without images (every one dropped by ``data.skip_bad``)."""
        K, F_ = self.cfg.num_classes, self.svm_weight.shape[1]
        return {"features": torch.zeros(0, F_, dtype=torch.float16), "boxes": torch.zeros(0, 4),
                "gt_label": torch.zeros(0, dtype=torch.int64), "class_iou": torch.zeros(0, K),
                "best_class": torch.zeros(0, dtype=torch.int64), "best_iou": torch.zeros(0),
                "best_box": torch.zeros(0, 4)}

    # ----------------------------------------------------------------------------------------------
    # Prediction

    @torch.no_grad()
    def predict(self, images: Tensor | Sequence[Tensor]) -> list[DetectionPrediction]:
        """Detections in each input image's own pixels, best first (none where selective search finds
        no region)."""
        images = image_list(images)
        return [self._predict_one(im) for im in images]

    def _predict_one(self, image: Tensor) -> DetectionPrediction:
        cfg = self.cfg
        size = tuple(image.shape[-2:])
        proposals = self.search(image).to(image.device)
        features = self.embed(image, proposals)  # (N, F)
        scores = torch.sigmoid(self.scores(features).float())  # (N, K)
        # every (proposal, class) pair above the threshold, then NMS within each class (section 2.2)
        n, labels = torch.where(scores > cfg.score_thresh)
        keep = batched_nms(proposals[n], scores[n, labels], labels, cfg.nms_iou)[:cfg.detections_per_img]
        n, labels = n[keep], labels[keep]
        boxes = clip(self.regress(features[n], proposals[n], labels), size)  # part 4, on the kept boxes
        return DetectionPrediction(boxes=boxes.float(), scores=scores[n, labels].float(), labels=labels)


def build(cfg: RCNNConfig) -> RCNN:
    if cfg.ss_mode not in MODES:
        raise ConfigError(f"ss_mode must be one of {', '.join(MODES)}, got {cfg.ss_mode!r}")
    if not 0 <= 2 * cfg.context < cfg.crop_size:
        raise ConfigError(f"context={cfg.context} must be below half of crop_size={cfg.crop_size}")
    cnn = create_timm(cfg.backbone, cfg.pretrained, num_classes=0)  # pooled features, no classifier
    data_cfg = getattr(cnn, "pretrained_cfg", None) or {}
    return RCNN(cfg, cnn, data_cfg.get("mean", (0.485, 0.456, 0.406)), data_cfg.get("std", (0.229, 0.224, 0.225)))

