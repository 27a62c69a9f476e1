"""Bootstrap confidence intervals over images: test sets are small, and a number without its spread
hides when two models do not differ.

The images are drawn with replacement (percentile bootstrap, Efron & Tibshirani 1993, ch. 13), the
task's own metric is computed on each draw, and the interval is the draws' 2.5th and 97.5th percentiles.

Draw ``j`` depends only on the seed and the number of images, so every pass over the same test images
(clean, each corruption, each zoom factor) sees the same resamples: a number derived from several passes
(mPC, rPC = mPC / clean, a dAP) gets its interval from the per-draw values (:func:`bootstrap_draws`),
paired, and the first ``k`` draws of any pass are the first ``k`` of every other.

COCO AP, AP50 and AP75 of a draw come from :class:`CocoDraws`: COCO matches detections to objects image
by image, so a resample only needs the per-image matches accumulated again (faster-coco-eval's C++
accumulate), not a new evaluation; the same numbers as evaluating the resample, to the last digit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from zir.data.contract import Target


def resample(targets: Sequence[Any], index: Sequence[int]) -> list[Any]:
    """The targets at ``index`` (with repeats); a :class:`Target` drawn again gets a fresh ``image_id``,
    because evaluators refuse an image id seen twice."""
    out = []
    for j, i in enumerate(index):
        t = targets[i]
        out.append(replace(t, image_id=j + 1) if isinstance(t, Target) else t)
    return out


def bootstrap_metric(predictions: Sequence[Any], targets: Sequence[Any], make_metric: Callable[[], Any],
                     keys: Sequence[str], n: int = 200, seed: int = 0,
                     level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the metric's ``keys`` over ``n`` resamples of the images.

    Args:
        predictions, targets: one per image, as the metric's ``update`` takes them.
        make_metric: a fresh metric object (``update`` then ``compute() -> dict``).
        keys: which numbers of ``compute()`` get an interval.
        n: number of resamples; 0 gives NaN intervals.
        seed: the draws depend on it only, so a report is reproducible.

    Returns:
        ``{key: (low, high)}``; NaN where every draw was NaN (e.g. no object of that kind).
    """
    draws = bootstrap_draws(predictions, targets, make_metric, keys, n, seed)
    return {k: percentile_interval(v, level) for k, v in draws.items()}


def bootstrap_draws(predictions: Sequence[Any], targets: Sequence[Any], make_metric: Callable[[], Any],
                    keys: Sequence[str], n: int = 200, seed: int = 0, metric: Any | None = None
                    ) -> dict[str, list[float]]:
    """The metric's ``keys`` on each of ``n`` resamples of the images (see :func:`bootstrap_metric`):
    ``{key: [value of draw 0, draw 1, ...]}``, NaN where a draw has no number. ``metric``: the metric of
    all images already updated (``make_metric()`` with every prediction), saves converting them again."""
    draws: dict[str, list[float]] = {k: [] for k in keys}
    m = len(predictions)
    if not n or not m:
        return draws
    whole = _whole(predictions, targets, make_metric, metric)
    fast = CocoDraws(whole) if whole is not None and CocoDraws.serves(whole, keys) else None
    for index in draw_indices(m, n, seed):
        if fast is not None:
            values = fast.compute(index)
        else:
            if whole is not None:  # the same images and ids as the update below, converted once
                metric = whole.resampled(index)
            else:
                metric = make_metric()
                metric.update([predictions[i] for i in index], resample(targets, index))
            values = metric.compute()
        for k in keys:
            draws[k].append(float(values.get(k, math.nan)))
    return draws


def draw_indices(m: int, n: int, seed: int = 0) -> list[list[int]]:
    """The ``n`` resamples of ``m`` images: ``n`` lists of ``m`` indices in ``[0, m)`` with repeats; draw
    ``j`` is the same for every call with the same ``m`` and ``seed`` (and the first ``k < n`` draws are
    those of a call with ``n = k``)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(m, (m,), generator=g).tolist() for _ in range(n)]


class CocoDraws:
    """COCO's AP, AP50 and AP75 (area all, 100 detections) of any resample of one evaluator's images.

    One per-image evaluation (faster-coco-eval's ``separate_eval``: per image and class the detections'
    matches at each IoU threshold) is kept; a resample picks those per-image results in its order, with
    repeats, and runs only COCO's accumulation on them. That is what evaluating the resample does (its
    images renamed ``1..m`` in draw order, as :meth:`~zir.metrics.coco.CocoEvaluator.resampled`), since
    matching never looks across images: the numbers agree to the last digit (tested), at a fraction of
    the cost (no COCO index, no loadRes, no IoU per draw).

    Args:
        metric: a :class:`~zir.metrics.coco.CocoEvaluator` with every image added.
    """

    KEYS = ("AP", "AP50", "AP75")

    def __init__(self, metric: Any) -> None:
        from faster_coco_eval import COCO

        from zir.metrics.coco import _IgnoreAwareEval, _results_for_type

        gt = metric.ground_truth()
        ids = [im["id"] for im in gt["images"]]  # the order images were added: the bootstrap's indices
        self._evals: dict[str, tuple[list[Any], Any, list[int]]] = {}
        if not ids:
            return
        coco_gt, results = COCO(gt), metric.results()
        for iou_type in metric.iou_types:
            ev = _IgnoreAwareEval(coco_gt, coco_gt.loadRes(_results_for_type(results, iou_type)), iou_type,
                                  print_function=lambda *args, **kwargs: None)
            ev.separate_eval = True  # keep the per-image results (a list: image-major within class and area)
            ev.evaluate()
            params = ev._paramsEval
            row = {image_id: r for r, image_id in enumerate(params.imgIds)}  # COCOeval sorts the ids
            self._evals[iou_type] = (ev._evalImgs_cpp, params, [row[i] for i in ids])

    def replaced(self, metric: Any) -> CocoDraws:
        """A copy whose per-image results for the images of ``metric`` (an evaluator holding some of this
        one's image ids, e.g. those a TIDE fix changed) are ``metric``'s: evaluating only the changed
        images gives the numbers of evaluating them all, since COCO matches image by image."""
        other = CocoDraws(metric)
        out = copy.copy(self)
        out._evals = {}
        for iou_type, (images, params, rows) in self._evals.items():
            new, new_params, new_rows = other._evals[iou_type]
            images = list(images)
            row_of = {image_id: r for r, image_id in enumerate(params.imgIds)}
            n_img, n_new = len(params.imgIds), len(new_params.imgIds)
            if list(new_params.catIds) != list(params.catIds) or len(new_params.areaRng) != len(params.areaRng):
                raise ValueError("replaced() needs an evaluator of the same classes")
            for r_new, image_id in enumerate(new_params.imgIds):
                r = row_of[image_id]
                for k in range(len(params.catIds) * len(params.areaRng)):  # class-major, then area
                    images[k * n_img + r] = new[k * n_new + r_new]
            out._evals[iou_type] = (images, params, rows)
        return out

    @classmethod
    def serves(cls, metric: Any, keys: Sequence[str]) -> bool:
        """Whether every key is one of ``<iou type>/AP|AP50|AP75`` of ``metric``'s iou types."""
        types = getattr(metric, "iou_types", ())
        return all("/" in k and k.split("/", 1)[0] in types and k.split("/", 1)[1] in cls.KEYS for k in keys)

    def compute(self, index: Sequence[int]) -> dict[str, float]:
        """``{"<iou type>/AP": ..., "/AP50", "/AP75"}`` of the images at ``index`` (positions in the order they
        were added, repeats allowed); NaN where no class has ground truth (pycocotools' -1)."""
        from faster_coco_eval.core.faster_eval_api import _C

        out: dict[str, float] = {}
        for iou_type, (images, params, rows) in self._evals.items():
            n_img, n_cls, n_area = len(params.imgIds), len(params.catIds), len(params.areaRng)
            p = copy.copy(params)
            p.imgIds = list(range(1, len(index) + 1))
            p.areaRng, p.areaRngLbl = params.areaRng[:1], params.areaRngLbl[:1]  # "all" only
            picked = [images[k * n_area * n_img + rows[i]] for k in range(n_cls) for i in index]
            precision = np.asarray(_C.COCOevalAccumulate(p, picked)["precision"])[:, :, :, 0, -1]  # (T, R, K)
            thresholds = np.asarray(params.iouThrs)
            for name, at in (("AP", None), ("AP50", 0.5), ("AP75", 0.75)):
                s = precision if at is None else precision[np.where(np.isclose(thresholds, at))[0]]
                s = s[s > -1]
                out[f"{iou_type}/{name}"] = float(np.mean(s)) if s.size else math.nan
        return out


def _whole(predictions: Sequence[Any], targets: Sequence[Any], make_metric: Callable[[], Any],
           metric: Any | None = None) -> Any | None:
    """The metric of all images (``metric`` if given), when it can hand out resampled copies of itself
    (``resampled(index)``, as :class:`~zir.metrics.coco.CocoEvaluator`) and the targets are :class:`Target` s
    with distinct ids; else None (each draw then converts its images itself)."""
    fresh = metric is None
    metric = make_metric() if fresh else metric
    ids = [t.image_id for t in targets if isinstance(t, Target)]
    if not hasattr(metric, "resampled") or len(ids) != len(targets) or None in ids or len(set(ids)) != len(ids):
        return None
    if fresh:
        metric.update(list(predictions), list(targets))
    return metric


def bootstrap_ratio(hits: Sequence[float], counts: Sequence[float], n: int = 200, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float]:
    """Interval of ``sum(hits) / sum(counts)`` over resampled images (e.g. recall of a bin: per image
    the objects found and the objects in the bin). Draws with no count are left out."""
    hits_a, counts_a = np.asarray(hits, np.float64), np.asarray(counts, np.float64)
    m = len(hits_a)
    if m == 0 or n == 0:
        return math.nan, math.nan
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(m, (n, m), generator=g).numpy()  # (n, m)
    num, den = hits_a[index].sum(1), counts_a[index].sum(1)
    return percentile_interval((num[den > 0] / den[den > 0]).tolist(), level)


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """``(low, high)`` percentiles holding ``level`` of the finite ``values``; NaN when there are none."""
    v = np.asarray([x for x in values if math.isfinite(x)], np.float64)
    if len(v) == 0:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))
