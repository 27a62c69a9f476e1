"""Detection errors split into TIDE's six types (Bolya et al. 2020), with the AP each would add if fixed.

Every detection that is not a true positive at IoU ``pos`` (0.5) is, in TIDE's order of tests:

* **loc**: its largest IoU with an object of its own class is in ``[bg, pos)`` (found, badly boxed);
* **cls**: IoU >= ``pos`` with an object of another class (boxed well, wrong class);
* **dupe**: IoU >= ``pos`` with an object of its class that a higher-scoring detection already took;
* **bkg**: IoU <= ``bg`` (0.1) with every object (fired on background);
* **both**: anything else (wrong class and badly boxed).

An object no detection finds, and no cls / loc error could have found, is **miss**.

dAP of a type: AP50 with every error of that type fixed by TIDE's oracle, minus AP50 as it is. The fixes:
cls and loc take the object's class and box (only the highest-scoring cls or loc error per object, of
either type, as TIDE's ``BestGTMatch``; the others, and those whose object is already found, are removed); dupe, bkg and both are removed; missed objects are
removed from the ground truth. Unlike the ``tidecv`` package, which computes its own AP, zir scores the
fixed predictions with its COCO evaluator (:class:`~zir.metrics.coco.CocoEvaluator`, pycocotools'
numbers): the AP before fixing *is* pycocotools' AP50, to the last digit, with classes without objects left
out as pycocotools does. Crowd and ``difficult`` objects are ignored ground truth: a detection on one (box
IoU >= ``pos``, same class) is no error.

**Masks** (instance runs, ``iou_type="segm"``): the same tests with mask IoU in place of box IoU, scored
by mask AP50; a fixed cls or loc error takes the object's mask as well as its box and class.

**Intervals**: with ``draws`` the AP before fixing and each dAP get a bootstrap 95% interval; draw ``j``
resamples the same images for the AP before and after each fix, so a dAP's interval is of the paired
difference (:mod:`zir.analysis.bootstrap`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torchvision.ops import box_iou

from zir.data.contract import DetectionPrediction, Target


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float64 ``(A, B)`` IoU of bool masks ``a (A, H, W)`` and ``b (B, H, W)`` (0 where both are empty)."""
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))

KINDS = ("cls", "loc", "both", "dupe", "bkg", "miss")


@dataclass(frozen=True)
class DetectionError:
    """One error: its ``kind``, the image (index in the lists given), the detection (index in that image's
    prediction; None for miss) and the object it concerns (index in the target; None for bkg and both)."""

    kind: str
    image: int
    det: int | None
    gt: int | None
    score: float
    free: bool = True  # cls / loc: the object is not found by another detection (else the fix removes it)


def find_errors(predictions: Sequence[DetectionPrediction], targets: Sequence[Target], pos: float = 0.5,
                bg: float = 0.1, max_dets: int = 100, iou_type: str = "bbox") -> list[DetectionError]:
    """Every error of every image (module docstring). Matching is COCO's at IoU ``pos``: detections in
    descending score, each to the unmatched object of its class with the highest IoU; ``iou_type``
    ``bbox`` (box IoU) or ``segm`` (mask IoU: predictions and targets need ``masks``)."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be bbox or segm, got {iou_type!r}")
    errors: list[DetectionError] = []
    for i, (pred, target) in enumerate(zip(predictions, targets)):
        order = torch.argsort(pred.scores, descending=True, stable=True)[:max_dets].tolist()
        counted = ~(target.iscrowd | target.difficult)
        gt_idx = counted.nonzero().flatten()
        g_boxes, g_labels = target.boxes[gt_idx].double(), target.labels[gt_idx]
        ign_boxes, ign_labels = target.boxes[~counted].double(), target.labels[~counted]
        d_boxes, d_labels = pred.boxes.double(), pred.labels
        if iou_type == "segm":
            if pred.masks is None or target.masks is None:
                raise ValueError(f"mask TIDE needs masks on the predictions and targets (image {i})")
            d_masks, t_masks = pred.masks.bool(), target.masks.bool()
            iou = mask_iou(d_masks, t_masks[gt_idx])  # (D, G)
        else:
            iou = box_iou(d_boxes, g_boxes)  # (D, G)
        same = d_labels[:, None] == g_labels[None, :]
        cls_iou = iou * same
        used = torch.zeros(len(gt_idx), dtype=torch.bool)
        tp = torch.zeros(len(d_boxes), dtype=torch.bool)
        for d in order:
            if len(gt_idx) == 0:
                break
            avail = cls_iou[d].masked_fill(used, -1)
            g = int(avail.argmax())
            if avail[g] >= pos:
                used[g] = tp[d] = True
        if len(ign_boxes):
            ign_iou = mask_iou(d_masks, t_masks[~counted]) if iou_type == "segm" else box_iou(d_boxes, ign_boxes)
            on_ignored = (ign_iou * (d_labels[:, None] == ign_labels[None, :]) >= pos).any(1)
        else:
            on_ignored = torch.zeros(len(d_boxes), dtype=torch.bool)
        usable = torch.zeros(len(gt_idx), dtype=torch.bool)
        for d in order:
            if tp[d] or on_ignored[d]:
                continue
            s = float(pred.scores[d])
            if len(gt_idx) == 0:
                errors.append(DetectionError("bkg", i, d, None, s))
                continue
            g = int(cls_iou[d].argmax())
            if bg <= cls_iou[d, g] < pos:
                errors.append(DetectionError("loc", i, d, int(gt_idx[g]), s, not bool(used[g])))
                usable[g] |= ~used[g]
                continue
            other = iou[d] * ~same[d]
            g = int(other.argmax())
            if other[g] >= pos:
                errors.append(DetectionError("cls", i, d, int(gt_idx[g]), s, not bool(used[g])))
                usable[g] |= ~used[g]
                continue
            dup = cls_iou[d] * used
            g = int(dup.argmax())
            if dup[g] >= pos:
                errors.append(DetectionError("dupe", i, d, int(gt_idx[g]), s))
                continue
            if iou[d].max() <= bg:
                errors.append(DetectionError("bkg", i, d, None, s))
                continue
            errors.append(DetectionError("both", i, d, None, s))
        for g in (~used & ~usable).nonzero().flatten().tolist():
            errors.append(DetectionError("miss", i, None, int(gt_idx[g]), 0.0))
    return errors


def fix(predictions: Sequence[DetectionPrediction], targets: Sequence[Target], errors: Sequence[DetectionError],
        which: Callable[[DetectionError], bool]) -> tuple[list[DetectionPrediction], list[Target]]:
    """Predictions and targets with the errors where ``which(error)`` fixed by TIDE's oracle."""
    # One detection per object can become its true positive: the highest-scoring cls or loc error on it,
    # of either type (TIDE's BestGTMatch), so fixing loc alone leaves an object whose best is a cls error
    # unfixed and the loc detection removed.
    best: dict[tuple[int, int], DetectionError] = {}
    for e in errors:
        if e.kind in ("cls", "loc") and e.free:
            key = (e.image, int(e.gt))  # type: ignore[arg-type]
            if key not in best or e.score > best[key].score:
                best[key] = e
    drop: dict[int, set[int]] = {}
    relabel: dict[tuple[int, int], int] = {}  # (image, det) -> the object it takes
    remove_gt: dict[int, set[int]] = {}
    for e in errors:
        if not which(e):
            continue
        if e.kind == "miss":
            remove_gt.setdefault(e.image, set()).add(int(e.gt))  # type: ignore[arg-type]
        elif e.kind in ("cls", "loc") and e.free and best[(e.image, int(e.gt))] is e:  # type: ignore[arg-type]
            relabel[(e.image, int(e.det))] = int(e.gt)  # type: ignore[arg-type]
        else:
            drop.setdefault(e.image, set()).add(int(e.det))  # type: ignore[arg-type]
    preds, tgts = [], []
    for i, (pred, target) in enumerate(zip(predictions, targets)):
        boxes, labels = pred.boxes.clone(), pred.labels.clone()
        masks = None if pred.masks is None else pred.masks.clone()
        for (j, d), g in relabel.items():
            if j == i:
                boxes[d], labels[d] = target.boxes[g], target.labels[g]
                if masks is not None and target.masks is not None:  # the oracle's mask too (mask TIDE)
                    masks[d] = target.masks[g].to(masks.dtype)
        keep = torch.ones(len(boxes), dtype=torch.bool)
        keep[list(drop.get(i, ()))] = False
        preds.append(DetectionPrediction(boxes[keep], pred.scores[keep], labels[keep],
                                         None if masks is None else masks[keep]))
        gone = torch.zeros(len(target.boxes), dtype=torch.bool)
        gone[list(remove_gt.get(i, ()))] = True
        tgts.append(_without(target, ~gone) if gone.any() else target)
    return preds, tgts


def _without(target: Target, keep: torch.Tensor) -> Target:
    return replace(target, boxes=target.boxes[keep], labels=target.labels[keep], iscrowd=target.iscrowd[keep],
                   difficult=target.difficult[keep], masks=None if target.masks is None else target.masks[keep])


def tide(predictions: Sequence[DetectionPrediction], targets: Sequence[Target], make_metric: Callable[[], Any],
         key: str = "bbox/AP50", object_bins: Sequence[torch.Tensor] | None = None,
         bin_names: Sequence[str] = (), more_bins: Sequence[tuple[Sequence[torch.Tensor], Sequence[str]]] = (),
         draws: int = 0, errors: Sequence[DetectionError] | None = None) -> dict[str, Any]:
    """TIDE's summary: error counts, AP50 and dAP per type; with ``object_bins`` (per image, the bin of each
    object, ``-1`` none) also dAP per bin for the types that concern an object (cls, loc, dupe, miss).
    ``more_bins``: further ``(object_bins, bin_names)`` splits (e.g. by crowding after by size), which reuse
    the errors and the AP before fixing instead of finding and scoring them again.

    ``key``'s iou type (``bbox/AP50`` or ``segm/AP50``) says which IoU finds the errors (``errors``: found
    already, by :func:`find_errors` with that iou type). ``draws``: bootstrap resamples of the AP and each
    dAP (paired: the same images drawn before and after a fix).

    Returns:
        ``{"AP": float, "counts": {kind: n}, "dAP": {kind: float}, "by_bin": {bin: {kind: float}}}``, and
        ``"more_by_bin"``: one such ``{bin: {kind: float}}`` per entry of ``more_bins``; with ``draws`` also
        ``"AP_ci": (low, high)`` and ``"dAP_ci": {kind: (low, high)}``.
    """
    from zir.analysis.bootstrap import CocoDraws, bootstrap_draws, draw_indices, percentile_interval

    base_metric = make_metric()
    base_metric.update(list(predictions), list(targets))
    ids = [t.image_id for t in targets]
    # COCO scores image by image: a fix changes a few images, so only those are evaluated again and spliced
    # into the per-image results of all of them (the same numbers as evaluating every image again)
    splice = CocoDraws(base_metric) if CocoDraws.serves(base_metric, [key]) and len(set(ids)) == len(ids) else None
    indices = draw_indices(len(targets), draws) if draws and targets else []
    by_id = sorted(range(len(targets)), key=lambda i: ids[i])

    def ap_draws(which: Callable[[DetectionError], bool], n: int) -> tuple[float, list[float]]:
        if splice is not None:
            changed = sorted({e.image for e in errors if which(e)})  # type: ignore[union-attr]
            found = splice
            if changed:
                at = {i: j for j, i in enumerate(changed)}
                moved = [(replace(e, image=at[e.image]), which(e)) for e in errors if e.image in at]
                chosen = {m for m, picked in moved if picked}  # errors are unique: (image, det or gt) differ
                p, t = fix([predictions[i] for i in changed], [targets[i] for i in changed],
                           [m for m, _ in moved], lambda e: e in chosen)
                metric = make_metric()
                metric.update(p, t)
                found = splice.replaced(metric)
            # all images in the order COCOeval takes them (by id): score ties across images fall as there
            return found.compute(by_id)[key], [found.compute(i)[key] for i in indices[:n]]
        p, t = fix(predictions, targets, errors, which)
        metric = make_metric()
        metric.update(p, t)
        value = float(metric.compute()[key])
        return value, (bootstrap_draws(p, t, make_metric, [key], n=n, metric=metric)[key] if n else [])

    def ap(which: Callable[[DetectionError], bool]) -> float:
        return ap_draws(which, 0)[0]

    def split(bins_of: Sequence[torch.Tensor], names: Sequence[str]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for b, name in enumerate(names):
            def in_bin(e: DetectionError, b: int = b) -> bool:
                return e.gt is not None and int(bins_of[e.image][e.gt]) == b

            out[name] = {k: ap(lambda e, k=k: e.kind == k and in_bin(e)) - base for k in ("cls", "loc", "dupe", "miss")}
        return out

    if errors is None:
        errors = find_errors(predictions, targets, iou_type=key.split("/")[0])
    base, base_draws = ap_draws(lambda e: False, draws)
    fixed = {k: ap_draws(lambda e, k=k: e.kind == k, draws) for k in KINDS}
    out: dict[str, Any] = {"metric": key, "AP": base, "counts": {k: sum(e.kind == k for e in errors) for k in KINDS},
                           "dAP": {k: v - base for k, (v, _) in fixed.items()}}
    if draws:  # draw j of a dAP: the fixed AP of draw j minus the AP before fixing of the same draw
        out["AP_ci"] = percentile_interval(base_draws)
        out["dAP_ci"] = {k: percentile_interval([a - b for a, b in zip(d, base_draws)]) for k, (_, d) in fixed.items()}
    if object_bins is not None:
        out["by_bin"] = split(object_bins, bin_names)
    if more_bins:
        out["more_by_bin"] = [split(b, names) for b, names in more_bins]
    return out


def worst_images(errors: Sequence[DetectionError], kind: str, n: int = 4) -> list[int]:
    """The ``n`` images with the most errors of ``kind`` (ties: the lower index), those with none left out."""
    counts: dict[int, int] = {}
    for e in errors:
        if e.kind == kind:
            counts[e.image] = counts.get(e.image, 0) + 1
    return sorted(counts, key=lambda i: (-counts[i], i))[:n]
