"""Panoptic quality (Kirillov et al. 2019, "Panoptic Segmentation", section 4), as COCO's panopticapi computes it.

Per image and class, a predicted and a ground-truth segment of that class are matched when their IoU is
above 0.5 (the paper's theorem 1: such a match is unique). Then per class, over the whole data set:

* ``TP`` = matched pairs, ``FP`` = unmatched predicted segments, ``FN`` = unmatched ground-truth segments;
* ``PQ = sum_TP IoU / (|TP| + |FP|/2 + |FN|/2) = SQ x RQ`` with ``SQ = sum_TP IoU / |TP|`` and
  ``RQ = |TP| / (|TP| + |FP|/2 + |FN|/2)``.

Void and crowd (section 4.1 and panopticapi's ``pq_compute``):

* Ground-truth void pixels are removed from a predicted segment for its IoU (``union`` excludes them).
* An unmatched predicted segment whose pixels are more than half void or crowd of its class is not an FP.
* Crowd ground-truth segments are never matched and never FN.
* Pixels the prediction leaves unlabelled count as plain misses: they are not removed from the
  ground-truth segment's area and do not excuse an FN (torchmetrics' ``PanopticQuality`` does both; the
  paper and panopticapi do neither).

Averages (``PQ``, ``SQ``, ``RQ``, ``PQ_th``, ``PQ_st``) are means over the classes with
``TP + FP + FN > 0``; a class absent from both sides reports NaN under ``PQ/<class>``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from zir.data.contract import IGNORE_INDEX, PanopticPrediction, Target, as_target


class PanopticMetrics:
    """Accumulates per-class TP / FP / FN counts and IoU sums for panoptic quality.

    Args:
        classes: class names, for the keys ``PQ/<name>``.
        thing_classes: per class, True for a "thing" (countable) and False for "stuff".
        void_label: id of void pixels in a ground-truth id map (any id without a segment is void too).

    Usage::

        m = PanopticMetrics(["sky", "car"], thing_classes=[False, True])
        m.update(predictions, samples)     # [{"ids": (H, W), "segments": {id: class}}], panoptic samples
        m.update_maps(pred_ids, {1: 0, 2: 1}, gt_ids, {1: 0, 5: 1})   # or one image's id maps
        m.compute()                        # {"PQ", "SQ", "RQ", "PQ_th", "PQ_st", "PQ/sky", ...}
    """

    def __init__(self, classes: list[str], thing_classes: list[bool], void_label: int = IGNORE_INDEX) -> None:
        if len(classes) != len(thing_classes):
            raise ValueError(f"{len(thing_classes)} thing flags for {len(classes)} classes")
        self.classes = list(classes)
        self.thing_classes = [bool(t) for t in thing_classes]
        self.void_label = void_label
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        C = len(self.classes)
        self._iou_sum = torch.zeros(C, dtype=torch.float64)
        self._tp = torch.zeros(C, dtype=torch.int64)
        self._fp = torch.zeros(C, dtype=torch.int64)
        self._fn = torch.zeros(C, dtype=torch.int64)

    # ---------------------------------------------------------------------------------------------
    # Accumulation

    def update(self, predictions: Sequence[PanopticPrediction | Mapping[str, Any]],
               targets: Sequence[Target | Mapping[str, Any]]) -> None:
        """Add a batch of images.

        Args:
            predictions: per image a :class:`~zir.data.contract.PanopticPrediction` or
                ``{"ids": int (H, W), "segments": {id: class}}``; pixels whose id has no segment are unlabelled.
            targets: per image a panoptic :class:`~zir.data.contract.Target` (or sample dict) with
                ``masks`` uint8/bool ``(N, H, W)``, ``labels`` int ``(N,)`` and ``iscrowd`` bool ``(N,)``;
                pixels in no mask are void.
        """
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions but {len(targets)} targets")
        for pred, target in zip(predictions, targets):
            target = as_target(target)
            masks = target.masks.bool()  # (N, H, W)
            labels = target.labels.tolist()
            crowd = target.iscrowd.tolist()
            # id = index + 1, 0 = void; where masks overlap the later one wins.
            N = masks.shape[0]
            ids = torch.arange(1, N + 1).view(N, 1, 1)
            gt_ids = (masks * ids).amax(0) if N else torch.zeros(masks.shape[1:], dtype=torch.int64)
            gt_segments = {i + 1: int(c) for i, c in enumerate(labels)}
            gt_crowd = {i + 1 for i, c in enumerate(crowd) if c}
            if isinstance(pred, PanopticPrediction):
                pred_ids, pred_segments = pred.ids, pred.segment_classes()
            else:
                pred_ids, pred_segments = pred["ids"], {int(k): int(v) for k, v in pred["segments"].items()}
            self._add(torch.as_tensor(pred_ids), pred_segments, gt_ids, gt_segments, gt_crowd,
                      target.path or "target")

    @torch.no_grad()
    def update_maps(self, pred_ids: torch.Tensor, pred_segments: Mapping[int, int], gt_ids: torch.Tensor,
                    gt_segments: Mapping[int, int], gt_crowd: frozenset[int] | set[int] = frozenset()) -> None:
        """Add one image given as id maps.

        Args:
            pred_ids: int ``(H, W)`` predicted segment ids; ids missing from ``pred_segments`` are unlabelled.
            pred_segments: predicted segment id -> class index.
            gt_ids: int ``(H, W)`` ground-truth segment ids; ``void_label`` and ids missing from
                ``gt_segments`` are void.
            gt_segments: ground-truth segment id -> class index.
            gt_crowd: ids of ground-truth segments that are crowd regions.
        """
        if self.void_label in gt_segments:
            raise ValueError(f"ground-truth segment id {self.void_label} is the void label")
        self._add(torch.as_tensor(pred_ids), dict(pred_segments), torch.as_tensor(gt_ids), dict(gt_segments),
                  set(gt_crowd), "target")

    def _add(self, pred_ids: torch.Tensor, pred_segments: dict[int, int], gt_ids: torch.Tensor,
             gt_segments: dict[int, int], gt_crowd: set[int], source: str) -> None:
        if pred_ids.shape != gt_ids.shape:
            raise ValueError(f"{source}: prediction of shape {tuple(pred_ids.shape)} for a target of shape "
                             f"{tuple(gt_ids.shape)}: predictions must be at the image's size")
        C = len(self.classes)
        for name, segs in (("predicted", pred_segments), ("ground-truth", gt_segments)):
            bad = [c for c in segs.values() if not 0 <= c < C]
            if bad:
                raise ValueError(f"{source}: {name} class {bad[0]} outside the {C} classes")
        # Compact ids: every id without a segment becomes -1 (unlabelled / void) before counting.
        p_vals, p_inv = torch.unique(pred_ids.reshape(-1).long().cpu(), return_inverse=True)
        g_vals, g_inv = torch.unique(gt_ids.reshape(-1).long().cpu(), return_inverse=True)
        P, G = len(p_vals), len(g_vals)
        inter = torch.bincount(g_inv * P + p_inv, minlength=G * P).reshape(G, P)  # (G, P) pixel counts
        p_keys, g_keys = p_vals.tolist(), g_vals.tolist()
        p_area = inter.sum(0).tolist()
        g_area = inter.sum(1).tolist()
        g_void = [k not in gt_segments for k in g_keys]
        # Pixels of each predicted segment lying on ground-truth void.
        p_void = inter[torch.tensor(g_void, dtype=torch.bool)].sum(0).tolist()
        nz = inter.nonzero().tolist()
        counts = inter.tolist()

        matched_p, matched_g = set(), set()
        for gi, pi in nz:
            gk, pk = g_keys[gi], p_keys[pi]
            if g_void[gi] or gk in gt_crowd or pk not in pred_segments:
                continue
            c = gt_segments[gk]
            if pred_segments[pk] != c:
                continue
            i = counts[gi][pi]
            iou = i / (p_area[pi] - p_void[pi] + g_area[gi] - i)
            if iou > 0.5:
                matched_p.add(pk)
                matched_g.add(gk)
                self._tp[c] += 1
                self._iou_sum[c] += iou

        for gi, gk in enumerate(g_keys):
            if not g_void[gi] and gk not in gt_crowd and gk not in matched_g:
                self._fn[gt_segments[gk]] += 1

        crowd_rows = {c: [gi for gi, gk in enumerate(g_keys) if gk in gt_crowd and gt_segments[gk] == c]
                      for c in {gt_segments[k] for k in gt_crowd if k in gt_segments}}
        for pi, pk in enumerate(p_keys):
            if pk not in pred_segments or pk in matched_p:
                continue
            c = pred_segments[pk]
            ignored = p_void[pi] + sum(counts[gi][pi] for gi in crowd_rows.get(c, []))
            if ignored / p_area[pi] <= 0.5:
                self._fp[c] += 1

    # ---------------------------------------------------------------------------------------------
    # Results

    def per_class(self) -> dict[str, torch.Tensor]:
        """float64 ``(C,)`` tensors ``pq``, ``sq``, ``rq`` (NaN where ``TP + FP + FN = 0``) and ``n``."""
        tp = self._tp.double()
        denom = tp + 0.5 * self._fp + 0.5 * self._fn
        nan = torch.tensor(math.nan, dtype=torch.float64)
        present = (self._tp + self._fp + self._fn) > 0
        sq = torch.where(tp > 0, self._iou_sum / tp.clamp(min=1), torch.zeros_like(tp))
        rq = torch.where(present, tp / denom.clamp(min=1e-12), nan)
        sq = torch.where(present, sq, nan)
        return {"pq": sq * rq, "sq": sq, "rq": rq, "n": present}

    def compute(self) -> dict[str, float]:
        """The summary numbers.

        Returns:
            ``{"PQ", "SQ", "RQ", "PQ_th", "PQ_st", "PQ/<class>" ...}`` in [0, 1]; NaN where no class counts.
        """
        pc = self.per_class()
        things = torch.tensor(self.thing_classes, dtype=torch.bool)
        out = {
            "PQ": float(pc["pq"].nanmean()),
            "SQ": float(pc["sq"].nanmean()),
            "RQ": float(pc["rq"].nanmean()),
            "PQ_th": float(pc["pq"][things].nanmean()),
            "PQ_st": float(pc["pq"][~things].nanmean()),
        }
        out.update({f"PQ/{name}": float(v) for name, v in zip(self.classes, pc["pq"])})
        return out
