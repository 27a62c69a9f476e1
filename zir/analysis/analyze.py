"""``zir analyze RUN``: the lecture's questions about a trained model, answered on its test data.

1. **Distance** (object size): COCO small / medium / large, finer bins of size relative to the image
   (the synthetic data's recorded ``scale`` where present), and the zoom-out experiment: every test image
   shrunk by 1, 0.75, 0.5, 0.35, 0.25 and padded back to its size (the camera moving away), the metric
   against the factor. Classification: accuracy against the zoom factor (and by recorded scale).
2. **Crowding**: every ground-truth object's largest IoU with another object (and the synthetic data's
   recorded ``overlap``), recall at a score threshold and AP per bin, and a sweep of the NMS IoU threshold
   where the model has one.
3. **Transformations**: the 15 corruptions of ImageNet-C / COCO-C plus rain and sun flare
   (:mod:`zir.augment.corruptions`) at 5 severities; the metric per corruption and severity, mPC and rPC
   (COCO-C's definitions) and a heat map; rotation and translation sweeps (predictions mapped back).
   ``--quick``: 8 corruptions at severity 3, two rotations and translations.

4. **Detection errors** (detection, instance): TIDE's six error types with the AP50 each would add if
   fixed, split by object size and crowding, and the worst images per type (:mod:`zir.analysis.tide`);
   instance runs on boxes and on masks.

Every headline number carries a bootstrap 95% interval over images (:mod:`zir.analysis.bootstrap`): the
clean metrics, the zoom-out and the recall per bin from ``bootstrap`` draws; each corruption cell, mPC and
rPC (paired with the clean draws), each bin's AP and TIDE's AP50 and dAP from the first ``CELL_DRAWS``.
Panoptic runs: PQ / SQ / RQ by thing and stuff and by segment size. ``analysis.json`` also records when
each step started (``timing``: wall and CPU seconds).
Everything goes to ``RUN/analysis/analysis.json`` (NaN as ``null``) and ``RUN/analysis/report.html``
(with plots). Predictions come from the engine's evaluation loop
(:func:`zir.engine.evaluate.evaluate_predict`), which takes the zoomed model as it takes a model.
"""

from __future__ import annotations

import html
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from zir.analysis import slices
from zir.analysis.bootstrap import bootstrap_draws, bootstrap_ratio, percentile_interval

DEFAULT_SCORE = 0.3  # the score threshold of recall per bin (the report's drawing threshold too)
NMS_SWEEP = (0.3, 0.5, 0.7)
CELL_DRAWS = 50
"""Draws for the intervals of the many cells (each corruption and severity, each bin's AP, each dAP):
the first ``min(bootstrap, CELL_DRAWS)`` of the same draws as the clean metrics (the same images drawn),
so mPC, rPC and dAP get paired intervals and the cost stays bounded."""
HEADLINE = {"classify": ("accuracy",), "detect": ("bbox/AP", "bbox/AP50"),
            "instance": ("bbox/AP", "segm/AP", "segm/AP50"), "segment": ("miou", "pixel_accuracy"),
            "panoptic": ("PQ",)}


@dataclass
class _Recorder:
    """Stands in for a metric in ``evaluate_predict``: keeps every prediction and target, so that the
    metric can be computed again on subsets (bins) and resamples (bootstrap)."""

    predictions: list[Any] = field(default_factory=list)
    targets: list[Any] = field(default_factory=list)

    def update(self, predictions: Sequence[Any], targets: Sequence[Any]) -> None:
        self.predictions += list(predictions)
        self.targets += list(targets)

    def compute(self) -> dict[str, float]:
        return {}


class _MultiRecorder:
    """Stands in for a metric when ``predict`` returns one ``{name: prediction}`` per image (see
    :func:`nms_sweep_predict`): one :class:`_Recorder` per name."""

    def __init__(self, names: Sequence[str]) -> None:
        self.recorders = {n: _Recorder() for n in names}

    def update(self, predictions: Sequence[dict[str, Any]], targets: Sequence[Any]) -> None:
        for name, rec in self.recorders.items():
            rec.update([p[name] for p in predictions], targets)

    def compute(self) -> dict[str, float]:
        return {}


def nms_sweep_predict(model: Any, values: Sequence[float]) -> Callable[[list[torch.Tensor]], list[dict[str, Any]]]:
    """A stand-in for a two-stage detector's ``predict`` that gives, per image, ``{"clean": its prediction,
    "<v>": the prediction with the final NMS IoU threshold v}`` for each of ``values``, from one pass of
    the backbone, the RPN and the box head: those are computed once per batch and handed back unchanged
    for each threshold (only ``roi_heads.nms_iou`` differs between the predictions; the mask head, if any,
    runs on each threshold's detections). Each prediction is what ``model.predict`` gives with that
    threshold set (tested equal to rebuilding the model with it)."""
    heads = model.roi_heads
    own = heads.nms_iou

    def run(images: list[torch.Tensor]) -> list[dict[str, Any]]:
        memo: dict[str, Any] = {}

        def once(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                if name not in memo:
                    memo[name] = fn(*args, **kwargs)
                return memo[name]
            return call

        # instance attributes shadow the methods for this batch only (removed in `finally`)
        model.features = once("features", model.features)
        model.rpn.forward = once("rpn", model.rpn.forward)
        heads.forward = once("box", heads.forward)
        try:
            out: list[dict[str, Any]] = [{"clean": p} for p in model.predict(images)]
            for v in values:
                heads.nms_iou = v
                for o, p in zip(out, model.predict(images)):
                    o[str(v)] = p
        finally:
            heads.nms_iou = own
            del model.features, model.rpn.forward, heads.forward
        return out

    return run


def analyze(run: str | Path, quick: bool = False, bootstrap: int = 200, score: float = DEFAULT_SCORE,
            progress: bool = True, corruptions: Sequence[str] | None = None, **data_settings: Any) -> Path:
    """Answer the lecture's questions for the trained run ``run`` and write ``run/analysis/``.

    Args:
        run: ``runs/NAME`` made by ``zir train``.
        quick: fewer zoom factors and NMS values, 8 corruptions at severity 3, for a first look.
        bootstrap: resamples per confidence interval (0: no intervals).
        score: score threshold of the recall per bin (detection and instance).
        corruptions: only these corruptions (names of :data:`zir.augment.corruptions.CORRUPTIONS`), at
            severities 1-5 (or 3 with ``quick``); default: all 17 (8 with ``quick``).
        data_settings: ``data=PATH`` (all of it is analysed) and other data settings, as ``zir eval``;
            by default the run's validation data.

    Returns:
        The path of ``report.html`` (``analysis.json`` lies next to it).

    Raises:
        DataError: the run's data is not there (the message names the path and says to pass ``data=``),
            or the data's task or classes differ from the model's.
    """
    from zir.engine.data import build_loader
    from zir.engine.evaluate import evaluate_predict, make_metric
    from zir.engine.predictor import load, run_data

    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0 resamples, got {bootstrap}")
    run = Path(run)
    predictor = load(run)
    cfg, bundle = run_data(predictor, run, data_settings, "analyze")
    task, classes = bundle.task, bundle.classes
    loader = cached(build_loader(bundle.val, cfg.data, train=False, seed=cfg.train.seed))
    device = predictor.device
    thing = predictor.model.thing_classes

    def new_metric() -> Any:
        return make_metric(task, classes, thing)

    started = (time.time(), time.process_time())
    steps: list[dict[str, Any]] = []

    def say(text: str) -> None:
        """Progress on stderr, and the step's start in ``timing`` (wall and this process's CPU seconds)."""
        steps.append({"step": text, "wall_s": time.time() - started[0], "cpu_s": time.process_time() - started[1]})
        if progress:
            print(f"analyze: {text}", file=sys.stderr)

    if corruptions is not None:
        from zir.augment.corruptions import CORRUPTIONS

        unknown = [c for c in corruptions if c not in CORRUPTIONS]
        if unknown or not corruptions:
            raise ValueError(f"corruptions must be among {', '.join(CORRUPTIONS)}; got {list(corruptions)}")
    cell_n = min(bootstrap, CELL_DRAWS)
    say(f"predicting {len(bundle.val)} images")  # type: ignore[arg-type]
    sweep_key = nms_key(predictor.model) if task in ("detect", "instance") else None
    sweep_values = NMS_SWEEP[::2] if quick else NMS_SWEEP
    # two-stage detectors: the NMS sweep's predictions come from the clean pass (same features and boxes
    # before NMS, one NMS per value); other models rebuild with each value and predict again
    shared_sweep = sweep_key == "roi_heads.nms_iou"
    clean = _Recorder()
    swept: dict[float, _Recorder] = {}
    if shared_sweep:
        multi = _MultiRecorder(["clean", *map(str, sweep_values)])
        evaluate_predict(nms_sweep_predict(predictor.model, sweep_values), loader, multi, task, device,
                         progress=progress)
        clean = multi.recorders["clean"]
        swept = {v: multi.recorders[str(v)] for v in sweep_values}
    else:
        evaluate_predict(predictor.model.predict, loader, clean, task, device, progress=progress)
    keys = HEADLINE[task]
    metrics, clean_metric = _compute_metric(new_metric, clean)
    say(f"bootstrap ({bootstrap} resamples)")
    clean_draws = bootstrap_draws(clean.predictions, clean.targets, new_metric, keys, n=bootstrap,
                                  metric=clean_metric)
    ci = {k: percentile_interval(v) for k, v in clean_draws.items()}
    result: dict[str, Any] = {
        "run": str(run), "model": cfg.model, "task": task, "data": cfg.data.val_path or cfg.data.path,
        "images": len(clean.predictions), "quick": quick, "bootstrap": bootstrap, "score": score,
        "clean": {k: metrics.get(k, math.nan) for k in keys}, "clean_ci": ci, "clean_all": metrics, "notes": [],
    }
    notes: list[str] = result["notes"]
    meta = _object_meta(bundle.val)

    # 1. Distance
    if task in ("detect", "instance"):
        # COCO's own APs / APm / APl, under the plain AP key of each iou type
        size: dict[str, Any] = {"coco": {name: {f"{t}/AP": metrics.get(f"{t}/AP{name[0]}", math.nan)
                                                for t in _iou_types(task)} for name, _, _ in slices.COCO_AREAS}}
        rel = [slices.relative_size(t, meta.get(t.image_id)) for t in clean.targets]
        used_scale = bool(meta) and all(m is not None and len(m) == len(t.boxes)
                                        for t in clean.targets for m in [meta.get(t.image_id)])
        bins = slices.edges_to_bins(slices.RELATIVE_SIZE)
        size["relative_by"] = "recorded scale" if used_scale else "sqrt(area / image area)"
        size["relative"] = _bins_json(_detection_bins(clean, [slices.bin_index(r, bins, left_closed=True) for r in rel], bins,
                                                      new_metric, score, bootstrap, cell_n))
        result["size"] = size
    elif task == "classify":
        scales = _meta_in_order(bundle.val)  # classification targets are labels: match images by order
        if len(scales) == len(clean.predictions) and all(len(m) == 1 and "scale" in m[0] for m in scales):
            values = torch.tensor([m[0]["scale"] for m in scales], dtype=torch.float64)  # type: ignore[index]
            bins = slices.edges_to_bins(slices.RELATIVE_SIZE)
            result["size"] = {"relative_by": "recorded scale", "relative": _bins_json(
                slices.accuracy_bins(clean.predictions, clean.targets, values, bins))}
        else:
            notes.append("size bins: the data records no object scale for classification; zoom-out only")
    else:
        notes.append(f"size bins: {task} has no separate objects to measure; zoom-out only")

    if task == "panoptic":
        result["panoptic"] = panoptic_breakdown(clean.predictions, clean.targets, classes, thing)
        notes.append("panoptic: PQ / SQ / RQ for things and stuff and PQ of things by size (no intervals on "
                     "these); zoom-out, corruptions and crowding are not implemented for panoptic runs yet")
    else:
        factors = slices.QUICK_ZOOM_FACTORS if quick else slices.ZOOM_FACTORS
        zoom = []
        for f in factors:
            say(f"zoom-out x{f:g}")
            rec = clean if f == 1 else _Recorder()
            if f != 1:
                evaluate_predict(slices.zoomed(predictor.model.predict, f), loader, rec, task, device,
                                 progress=progress)
            values, metric = (metrics, None) if rec is clean else _compute_metric(new_metric, rec)
            # x1 is the clean pass: its interval is the clean one (same draws, same seed), not drawn again
            zoom_ci = ({keys[0]: ci[keys[0]]} if rec is clean else
                       {k: percentile_interval(v) for k, v in bootstrap_draws(
                           rec.predictions, rec.targets, new_metric, keys[:1], n=bootstrap, metric=metric).items()})
            zoom.append({"factor": f, "metrics": {k: values.get(k, math.nan) for k in keys}, "ci": zoom_ci})
        result["zoom"] = zoom
        geometric: dict[str, list[dict[str, Any]]] = {}
        for kind, amounts in (("rotation", slices.QUICK_ROTATIONS if quick else slices.ROTATIONS),
                              ("translation", slices.QUICK_TRANSLATIONS if quick else slices.TRANSLATIONS)):
            geometric[kind] = []
            for a in amounts:
                if a == 0:
                    values = metrics
                else:
                    say(f"{kind} {a:g}")
                    values, _ = evaluate_predict(slices.warped(predictor.model.predict, kind, a), loader,
                                                 new_metric(), task, device, progress=progress)
                geometric[kind].append({"amount": a, "metrics": {k: values.get(k, math.nan) for k in keys}})
        result["geometric"] = geometric

    # 3. Transformations (before crowding's NMS sweep only to keep the report's order in one place)
    if task != "panoptic":
        result["corruptions"] = _corruption_suite(predictor.model.predict, loader, task, device, new_metric,
                                                  keys[0], metrics.get(keys[0], math.nan), quick, progress, say,
                                                  names=corruptions, draws=cell_n,
                                                  clean_draws=clean_draws[keys[0]][:cell_n])

    # 2. Crowding
    if task in ("detect", "instance"):
        crowd = [slices.crowding(t.boxes) for t in clean.targets]
        max_iou = [c[1] for c in crowd]
        counts = torch.cat([c[0] for c in crowd]) if crowd else torch.zeros(0, dtype=torch.int64)
        crowding: dict[str, Any] = {
            "overlap_count_histogram": torch.bincount(counts.clamp(max=5), minlength=6).tolist(),
            "max_iou": _bins_json(_detection_bins(
                clean, [slices.bin_index(v, slices.CROWD_IOU) for v in max_iou], slices.CROWD_IOU, new_metric,
                score, bootstrap, cell_n)),
        }
        overlaps = [meta.get(t.image_id) for t in clean.targets]
        if meta and all(m is not None and len(m) == len(t.boxes) and all("overlap" in o for o in m)
                        for m, t in zip(overlaps, clean.targets)):
            values = [torch.tensor([o["overlap"] for o in m], dtype=torch.float64) for m in overlaps]  # type: ignore[union-attr]
            crowding["synth_overlap"] = _bins_json(_detection_bins(
                clean, [slices.bin_index(v, slices.SYNTH_OVERLAP) for v in values], slices.SYNTH_OVERLAP,
                new_metric, score, bootstrap, cell_n))
        if sweep_key is None:
            notes.append(f"NMS sweep: {cfg.model} has no NMS IoU threshold to sweep")
        else:
            crowding["nms_key"] = f"model_args.{sweep_key}"
            crowding["nms_sweep"] = []
            for v in sweep_values:
                rec = swept.get(v)
                if rec is None:
                    say(f"NMS IoU {v:g}")
                    model = with_setting(predictor, sweep_key, v)
                    rec = _Recorder()
                    evaluate_predict(model.predict, loader, rec, task, device, progress=progress)
                bins = _detection_bins(rec, [slices.bin_index(x, slices.CROWD_IOU) for x in max_iou],
                                       slices.CROWD_IOU, new_metric, score, 0)
                values = _compute(new_metric, rec)  # once, not once per key
                crowding["nms_sweep"].append({"nms_iou": v, "metrics": {k: values.get(k, math.nan) for k in keys},
                                              "bins": _bins_json(bins)})
        result["crowding"] = crowding
    else:
        notes.append(f"crowding: without objects in a {task} task, crowding has no meaning; skipped")

    out_dir = run / "analysis"
    out_dir.mkdir(exist_ok=True)

    # 4. Detection errors (TIDE), on boxes, split by size and crowding
    if task in ("detect", "instance"):
        from zir.analysis import tide
        from zir.metrics.coco import CocoEvaluator

        say("TIDE error split")

        size_bins = slices.edges_to_bins(slices.RELATIVE_SIZE)
        size_of = [slices.bin_index(slices.relative_size(t, meta.get(t.image_id)), size_bins, left_closed=True)
                   for t in clean.targets]
        crowd_of = [slices.bin_index(slices.crowding(t.boxes)[1], slices.CROWD_IOU) for t in clean.targets]
        for iou_type in _iou_types(task):  # boxes; instance runs also masks (mask IoU, mask AP50)
            def type_metric(iou_type: str = iou_type) -> Any:
                return CocoEvaluator(classes, (iou_type,))

            errors = tide.find_errors(clean.predictions, clean.targets, iou_type=iou_type)
            # one call: the errors and the AP before fixing are shared by the size and the crowding split
            split = tide.tide(clean.predictions, clean.targets, type_metric, key=f"{iou_type}/AP50",
                              object_bins=size_of, bin_names=[b[0] for b in size_bins],
                              more_bins=[(crowd_of, [b[0] for b in slices.CROWD_IOU])], draws=cell_n, errors=errors)
            result["tide" if iou_type == "bbox" else "tide_segm"] = {
                **{k: v for k, v in split.items() if k not in ("by_bin", "more_by_bin")},
                "by_size": split["by_bin"], "by_crowding": split["more_by_bin"][0],
                "worst": _draw_worst(errors, clean, bundle.val, classes, score, out_dir,
                                     prefix="" if iou_type == "bbox" else "segm_")}

    say("report")
    # when each step started, in seconds from the start: what a step costs is the next one's start minus its
    # own; CPU seconds of this process (with one thread, the time on a free core)
    result["timing"] = {"steps": steps, "wall_s": time.time() - started[0],
                        "cpu_s": time.process_time() - started[1], "threads": torch.get_num_threads()}
    (out_dir / "analysis.json").write_text(json.dumps(_plain(result), indent=1))
    return write_html(result, out_dir)


# --------------------------------------------------------------------------------------------------
# The test images, read once

CACHE_BYTES = 2 * 1024 ** 3
"""Largest test set (its batches' tensors) kept in memory for the analysis's many passes."""


def cached(loader: Any, limit: int = CACHE_BYTES) -> Any:
    """The loader's batches as a list when they fit in ``limit`` bytes, else the loader itself.

    Every question passes over the same test images, 13 times with ``--quick`` and about 100 times in the
    full analysis; reading (or synthesising) and collating them again each time cost about 1.2 s of CPU per
    pass on 200 synthetic scenes. The evaluation loop takes any iterable of batches, in the same order.
    """
    batches: list[Any] = []
    size = 0
    for batch in loader:
        batches.append(batch)
        size += sum(t.numel() * t.element_size() for t in _tensors(batch))
        if size > limit:
            return loader
    return batches


def _tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a batch (a dataclass, list, tuple or dict of them, nested)."""
    import dataclasses

    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in _tensors(getattr(obj, f.name))]
    if isinstance(obj, (list, tuple)):
        return [t for x in obj for t in _tensors(x)]
    if isinstance(obj, dict):
        return [t for x in obj.values() for t in _tensors(x)]
    return []


# --------------------------------------------------------------------------------------------------
# Panoptic


def panoptic_breakdown(predictions: Sequence[Any], targets: Sequence[Any], classes: list[str],
                       thing_classes: list[bool]) -> dict[str, Any]:
    """Beyond PQ: PQ, SQ and RQ averaged over the thing and over the stuff classes, and the thing classes'
    PQ / SQ / RQ by relative object size (``sqrt(segment area / image area)``, the bins of
    :data:`slices.RELATIVE_SIZE`).

    A size bin scores the ground-truth thing segments in it; those outside it (and every stuff segment)
    become crowd regions for that bin: never matched, never missed, and a predicted segment lying mostly
    on them is no false positive. Other unmatched predictions stay false positives in every bin, as in
    the detection bins (:mod:`zir.analysis.slices`).

    Returns:
        ``{"things": {"PQ", "SQ", "RQ"}, "stuff": {...}, "by_size": [{"name", "objects", "metrics":
        {"PQ_th", "SQ_th", "RQ_th"}}]}`` (NaN where no class counts).
    """
    from dataclasses import replace

    from zir.metrics.panoptic import PanopticMetrics

    things = torch.tensor(thing_classes, dtype=torch.bool)

    def summary(metric: PanopticMetrics, which: torch.Tensor) -> dict[str, float]:
        pc = metric.per_class()
        return {k.upper(): float(pc[k][which].nanmean()) if which.any() else math.nan for k in ("pq", "sq", "rq")}

    whole = PanopticMetrics(classes, thing_classes)
    whole.update(list(predictions), list(targets))
    out: dict[str, Any] = {"things": summary(whole, things), "stuff": summary(whole, ~things), "by_size": []}
    bins = slices.edges_to_bins(slices.RELATIVE_SIZE)
    is_thing = [things[t.labels.long()] for t in targets]
    which = [slices.bin_index(slices.relative_size(t), bins, left_closed=True) for t in targets]
    for k, (name, _, _) in enumerate(bins):
        inside = [(w == k) & th & ~t.iscrowd for w, th, t in zip(which, is_thing, targets)]
        n = int(sum(int(m.sum()) for m in inside))
        entry: dict[str, Any] = {"name": name, "objects": n, "metrics": {}}
        if n:
            metric = PanopticMetrics(classes, thing_classes)
            metric.update(list(predictions), [replace(t, iscrowd=~m) for t, m in zip(targets, inside)])
            entry["metrics"] = {f"{key}_th": v for key, v in summary(metric, things).items()}
        out["by_size"].append(entry)
    return out


# --------------------------------------------------------------------------------------------------
# Corruptions


def corrupted(predict: Callable[[list[torch.Tensor]], list[Any]], name: str, severity: int, seed: int = 0
              ) -> Callable[[list[torch.Tensor]], list[Any]]:
    """A stand-in for ``predict`` that sees every image corrupted; image ``k`` of the pass (in loader
    order) gets seed ``seed + k``, so a pass is the same whatever the batch size."""
    from zir.augment.corruptions import corrupt

    count = [0]

    def run(images: list[torch.Tensor]) -> list[Any]:
        seeds = list(range(seed + count[0], seed + count[0] + len(images)))
        count[0] += len(images)
        if isinstance(images, torch.Tensor):  # classification batches come as one (B, 3, H, W) tensor
            return predict(corrupt(images, name, severity, seeds))
        if all(im.shape == images[0].shape for im in images):  # one batch when the sizes agree
            bad = corrupt(torch.stack(images), name, severity, seeds).unbind(0)
        else:
            bad = [corrupt(im[None], name, severity, [s])[0] for im, s in zip(images, seeds)]
        return predict(list(bad))

    return run


def mpc_rpc(table: dict[str, dict[int, float]], clean: float) -> tuple[float, float]:
    """COCO-C's mean performance under corruption, ``mPC = mean_c mean_s P[c][s]`` over the corruptions and
    severities in ``table``, and the relative performance ``rPC = mPC / P_clean`` (Michaelis et al. 2019,
    eq. 1-2). NaN values (no objects) are left out; NaN when nothing is left or the clean metric is 0."""
    per_c = [sum(v) / len(v) for v in ([x for x in sev.values() if math.isfinite(x)] for sev in table.values()) if v]
    mpc = sum(per_c) / len(per_c) if per_c else math.nan
    return mpc, (mpc / clean if math.isfinite(mpc) and math.isfinite(clean) and clean != 0 else math.nan)


def _corruption_suite(predict: Callable, loader: Any, task: str, device: torch.device, new_metric: Callable,
                      key: str, clean: float, quick: bool, progress: bool, say: Callable[[str], None],
                      names: Sequence[str] | None = None, draws: int = 0, clean_draws: Sequence[float] = ()
                      ) -> dict[str, Any]:
    """The headline metric per corruption and severity, and mPC / rPC (all, the 15 of COCO-C, weather),
    with bootstrap intervals from ``draws`` resamples: each cell's, and mPC's and rPC's from the per-draw
    cells and the clean metric's draws ``clean_draws`` (the same images drawn, so rPC's ratio is paired)."""
    from zir.augment import corruptions as C
    from zir.engine.evaluate import evaluate_predict

    chosen, severities = (C.QUICK, (3,)) if quick else (C.CORRUPTIONS, (1, 2, 3, 4, 5))
    names = list(chosen if names is None else names)
    table: dict[str, dict[int, float]] = {}
    cell_draws: dict[str, dict[int, list[float]]] = {}
    for name in names:
        table[name], cell_draws[name] = {}, {}
        for sev in severities:
            say(f"corruption {name} severity {sev}")
            rec = _Recorder()
            evaluate_predict(corrupted(predict, name, sev), loader, rec, task, device, progress=progress)
            values, metric = _compute_metric(new_metric, rec)
            table[name][sev] = values.get(key, math.nan)
            cell_draws[name][sev] = bootstrap_draws(rec.predictions, rec.targets, new_metric, [key], n=draws,
                                                    metric=metric)[key]
    out: dict[str, Any] = {"metric": key, "clean": clean, "severities": list(severities), "table": table,
                           "draws": draws,
                           "table_ci": {n: {s: percentile_interval(v) for s, v in sev.items()}
                                        for n, sev in cell_draws.items()}}
    for group, members in (("all", names), ("benchmark15", C.BENCHMARK), ("weather", C.WEATHER)):
        sub = {n: table[n] for n in members if n in table}
        if sub:
            mpc, rpc = mpc_rpc(sub, clean)
            # draw j: mPC and rPC of every cell's draw j against the clean metric's draw j
            per_draw = [mpc_rpc({n: {s: cell_draws[n][s][j] for s in sev} for n, sev in sub.items()}, clean_draws[j])
                        for j in range(min(draws, len(clean_draws)))]
            out[group] = {"mPC": mpc, "rPC": rpc, "corruptions": len(sub),
                          "mPC_ci": percentile_interval([d[0] for d in per_draw]),
                          "rPC_ci": percentile_interval([d[1] for d in per_draw])}
    return out


# --------------------------------------------------------------------------------------------------
# Pieces


def _object_meta(dataset: Any) -> dict[int, list[dict[str, Any]]]:
    """``{image_id: per-object meta}`` where the data records it (the synthetic data's ``scale`` and
    ``overlap``, kept in a record's ``extra`` on disk); empty when it does not."""
    if hasattr(dataset, "objects_meta"):  # SynthDataset: image_id = index
        return {i: dataset.objects_meta(i) for i in range(len(dataset))}
    records = getattr(dataset, "records", [])
    return {r.image_id: r.extra for r in records if r.extra}


def _meta_in_order(dataset: Any) -> list[list[dict[str, Any]]]:
    """Per image in the loader's order, the recorded per-object meta (empty lists where none)."""
    if hasattr(dataset, "objects_meta"):
        return [dataset.objects_meta(i) for i in range(len(dataset))]
    return [r.extra for r in getattr(dataset, "records", [])]


def _iou_types(task: str) -> tuple[str, ...]:
    return ("bbox", "segm") if task == "instance" else ("bbox",)


def _compute(new_metric: Callable[[], Any], rec: _Recorder) -> dict[str, float]:
    return _compute_metric(new_metric, rec)[0]


def _compute_metric(new_metric: Callable[[], Any], rec: _Recorder) -> tuple[dict[str, float], Any]:
    """The metric's numbers on the recorded predictions, and the metric (the bootstrap reuses it)."""
    metric = new_metric()
    if rec.predictions:
        metric.update(rec.predictions, rec.targets)
    return metric.compute(), (metric if rec.predictions else None)


def _detection_bins(rec: _Recorder, bin_of: list[torch.Tensor], bins: Sequence[tuple[str, float, float]],
                    new_metric: Callable[[], Any], score: float, bootstrap: int, draws: int = 0
                    ) -> list[dict[str, Any]]:
    """:func:`slices.detection_bins` with a bootstrap interval on each bin's recall (``bootstrap`` draws)
    and AP / AP50 (the first ``draws`` of the same draws)."""
    metrics: list[tuple[int, Any, list[Any]]] = []
    results = slices.detection_bins(rec.predictions, rec.targets, bin_of, bins, new_metric, score,
                                    metrics_out=metrics if draws else None)
    found = slices.recall_at(rec.predictions, rec.targets, score)
    out = []
    for k, r in enumerate(results):
        entry = asdict(r)
        counted = [(b == k) & ~t.iscrowd & ~t.difficult for b, t in zip(bin_of, rec.targets)]
        entry["ci"] = {f"recall@{score:g}": bootstrap_ratio([float((f & c).sum()) for f, c in zip(found, counted)],
                                                            [float(c.sum()) for c in counted], n=bootstrap)}
        out.append(entry)
    for k, metric, binned in metrics:
        ap_keys = [key for key in out[k]["metrics"] if key.endswith(("/AP", "/AP50"))]
        for key, values in bootstrap_draws(rec.predictions, binned, new_metric, ap_keys, n=draws,
                                           metric=metric).items():
            out[k]["ci"][key] = percentile_interval(values)
    return out


def _draw_worst(errors: Sequence[Any], rec: _Recorder, dataset: Any, classes: list[str], score: float,
                out_dir: Path, n: int = 3, prefix: str = "") -> dict[str, list[str]]:
    """Per error type, the ``n`` images with the most such errors drawn: ground truth in white, then the
    detections in error (for misses: the detections with ``score >= score``). Returns ``{kind: [png names]}``."""
    from PIL import Image
    from torchvision.utils import draw_bounding_boxes

    from zir.analysis import tide
    from zir.analysis.draw import draw_prediction

    index = {_image_id(dataset, i): i for i in range(len(dataset))}
    folder = out_dir / "worst"
    folder.mkdir(exist_ok=True)
    out: dict[str, list[str]] = {}
    for kind in tide.KINDS:
        out[kind] = []
        for i in tide.worst_images(errors, kind, n):
            target = rec.targets[i]
            j = index.get(target.image_id)
            if j is None:
                continue
            image = dataset[j]["image"].as_subclass(torch.Tensor)
            k = max(1, 384 // max(1, max(image.shape[-2:])))
            big = image.repeat_interleave(k, -2).repeat_interleave(k, -1) if k > 1 else image
            big = draw_bounding_boxes(big, target.boxes * k, colors="white", width=2)
            pred = rec.predictions[i]
            mine = sorted((e for e in errors if e.kind == kind and e.image == i and e.det is not None),
                          key=lambda e: -e.score)
            dets = [e.det for e in mine[:10]]  # the 10 highest-scoring, so the picture stays readable
            # the detections in error, whatever their score (TIDE counts them all); for misses, what was found
            keep = torch.tensor(dets, dtype=torch.long) if dets else (pred.scores >= score).nonzero().flatten()
            pred = type(pred)(pred.boxes[keep] * k, pred.scores[keep], pred.labels[keep], None)
            name = f"worst/{prefix}{kind}_{i:04d}.png"
            Image.fromarray(draw_prediction(big, pred, classes).permute(1, 2, 0).numpy()).save(out_dir / name)
            out[kind].append(name)
    return out


def _image_id(dataset: Any, i: int) -> int:
    """The ``image_id`` of sample ``i`` without reading its pixels where the dataset allows."""
    records = getattr(dataset, "records", None)
    return records[i].image_id if records is not None else i  # SynthDataset: image_id = index


def _bins_json(bins: Sequence[Any]) -> list[dict[str, Any]]:
    return [b if isinstance(b, dict) else asdict(b) for b in bins]


def nms_key(model: Any) -> str | None:
    """The dotted ``model_args`` key of the model's final NMS IoU threshold, or None when it has none."""
    cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
    if cfg is None:
        return None
    if hasattr(getattr(cfg, "roi_heads", None), "nms_iou"):
        return "roi_heads.nms_iou"
    if hasattr(cfg, "nms_iou"):
        return "nms_iou"
    return None


def with_setting(predictor: Any, key: str, value: Any) -> Any:
    """The predictor's model rebuilt with ``model_args.KEY = value`` and the same weights, in eval mode."""
    from zir.models import get_spec

    cfg = predictor.config.override({f"model_args.{key}": value})
    if "pretrained" in cfg.model_args:
        cfg = cfg.override({"model_args.pretrained": "none"})  # the weights come from the run
    model = get_spec(cfg.model).build(cfg.model_config(len(predictor.classes)))
    model.load_state_dict(predictor.model.state_dict())
    return model.to(predictor.device).eval()


def _plain(obj: Any) -> Any:
    """JSON-ready: tuples as lists, NaN and infinities as ``null``."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, torch.Tensor):
        return _plain(obj.tolist())
    return obj


# --------------------------------------------------------------------------------------------------
# The report


def fmt(value: Any, ci: Sequence[float] | None = None) -> str:
    """A number for people: 4 digits, "n/a" for NaN / None (an empty bin), and its interval if given."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    if ci is not None and all(c is not None and math.isfinite(c) for c in ci):
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def write_html(result: dict[str, Any], out_dir: Path) -> Path:
    """``report.html`` (and its PNG plots) from an analysis result."""
    from zir.analysis import plots

    parts = [f"<h1>zir analyze <code>{html.escape(result['run'])}</code></h1>",
             f"<p>model <b>{html.escape(result['model'])}</b>, task <b>{result['task']}</b>, "
             f"{result['images']} images of <code>{html.escape(str(result['data']))}</code>; intervals: bootstrap "
             f"95% over images ({result['bootstrap']} resamples){' ; quick' if result['quick'] else ''}.</p>",
             "<h2>Clean metrics</h2>",
             _table(["metric", "value [95% CI]"],
                    [[k, fmt(v, result["clean_ci"].get(k))] for k, v in result["clean"].items()])]
    if result["notes"]:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in result["notes"]) + "</ul>")
    pan = result.get("panoptic")
    if pan:
        parts.append("<h2>Panoptic quality by thing / stuff</h2>")
        parts.append(_table(["classes", "PQ", "SQ", "RQ"], [[g, *(fmt(pan[g][k]) for k in ("PQ", "SQ", "RQ"))]
                                                           for g in ("things", "stuff")]))
        parts.append("<p>Thing classes by relative segment size (segments outside the bin ignored):</p>")
        parts.append(_bins_table(pan["by_size"]))
    parts.append("<h2>1. Distance: object size</h2>")
    size = result.get("size")
    if size and "coco" in size:
        parts.append("<p>COCO's own AP by area (small &lt; 32&sup2;, medium &lt; 96&sup2; px, large):</p>")
        parts.append(_table(["area", *next(iter(size["coco"].values())).keys()],
                            [[name, *map(fmt, v.values())] for name, v in size["coco"].items()]))
    if size:
        parts.append(f"<p>By relative size ({html.escape(size['relative_by'])}); objects outside a bin are "
                     "ignored ground truth:</p>")
        parts.append(_bins_table(size["relative"]))
        parts.append(_img(plots.plot_bins(size["relative"], "relative object size", out_dir / "size_bins.png")))
    if "zoom" in result:
        parts.append("<h3>Zoom-out (the camera moving away)</h3>")
        key = next(iter(result["zoom"][0]["metrics"]))
        parts.append(_table(["factor", *result["zoom"][0]["metrics"].keys()],
                            [[f"{z['factor']:g}", *(fmt(v, z["ci"].get(k)) for k, v in z["metrics"].items())]
                             for z in result["zoom"]]))
        parts.append(_img(plots.plot_zoom(result["zoom"], key, out_dir / "zoom.png")))
    geo = result.get("geometric")
    if geo:
        parts.append("<h2>3. Transformations: geometric sweeps</h2><p>Rotation in degrees (counter-clockwise) and "
                     "translation as a fraction of the image size; predictions are mapped back to the original "
                     "pixels (a box rotated back is the box around its corners, so rotation also loosens "
                     "correct boxes a little).</p>")
        for kind, rows in geo.items():
            mkeys = list(rows[0]["metrics"])
            parts.append(_table([kind, *mkeys], [[f"{r['amount']:g}", *(fmt(r["metrics"][k]) for k in mkeys)]
                                                 for r in rows]))
            parts.append(_img(plots.plot_sweep(rows, mkeys[0], kind, out_dir / f"{kind}.png")))
    corr = result.get("corruptions")
    if corr:
        parts.append("<h2>3. Transformations: corruptions</h2>")
        parts.append(f"<p>{html.escape(corr['metric'])} per corruption and severity (clean: {fmt(corr['clean'])}). "
                     "mPC: mean over corruptions and severities; rPC = mPC / clean (COCO-C). Intervals: "
                     f"bootstrap 95% over the first {corr.get('draws', 0)} draws (the same images drawn for every "
                     "cell and the clean metric, so mPC's and rPC's are paired).</p>")
        parts.append(_table(["set", "corruptions", "mPC", "rPC"],
                            [[g, str(corr[g]["corruptions"]), fmt(corr[g]["mPC"], corr[g].get("mPC_ci")),
                              fmt(corr[g]["rPC"], corr[g].get("rPC_ci"))]
                             for g in ("all", "benchmark15", "weather") if g in corr]))
        cis = corr.get("table_ci", {})
        parts.append(_table(["corruption", *(f"severity {s}" for s in corr["severities"])],
                            [[n, *(fmt(v.get(s, v.get(str(s))), _by_sev(cis.get(n, {}), s)) for s in corr["severities"])]
                             for n, v in corr["table"].items()]))
        parts.append(_img(plots.plot_heatmap(corr["table"], corr["severities"], corr["metric"],
                                             out_dir / "corruptions.png")))
    parts.append("<h2>2. Crowding</h2>")
    crowd = result.get("crowding")
    if crowd:
        parts.append("<p>Objects by how many others their box overlaps (0, 1, ..., 5+): "
                     f"{crowd['overlap_count_histogram']}.</p><p>By the largest IoU with another object:</p>")
        parts.append(_bins_table(crowd["max_iou"]))
        parts.append(_img(plots.plot_bins(crowd["max_iou"], "largest IoU with another object",
                                          out_dir / "crowding_bins.png")))
        if "synth_overlap" in crowd:
            parts.append("<p>By the synthetic data's recorded overlap (fraction hidden):</p>")
            parts.append(_bins_table(crowd["synth_overlap"]))
        if "nms_sweep" in crowd:
            parts.append(f"<h3>NMS IoU sweep (<code>{html.escape(crowd['nms_key'])}</code>)</h3>")
            names = [b["name"] for b in crowd["nms_sweep"][0]["bins"]]
            rkey = f"recall@{result['score']:g}"
            parts.append(_table(["NMS IoU", *crowd["nms_sweep"][0]["metrics"].keys(), *(f"{rkey} {n}" for n in names)],
                                [[f"{s['nms_iou']:g}", *map(fmt, s["metrics"].values()),
                                  *(fmt(b["metrics"].get(rkey)) for b in s["bins"])] for s in crowd["nms_sweep"]]))
            parts.append(_img(plots.plot_nms(crowd["nms_sweep"], rkey, out_dir / "nms_sweep.png")))
    else:
        parts.append("<p>n/a for this task (see the notes).</p>")
    for tide_key, title in (("tide", "4. Detection errors (TIDE, boxes)"), ("tide_segm", "4. TIDE (masks)")):
        td = result.get(tide_key)
        if not td:
            continue
        parts.append(f"<h2>{title}</h2>")
        parts.append(f"<p>{html.escape(td['metric'])} = {fmt(td['AP'], td.get('AP_ci'))} (pycocotools' number). Each "
                     "row: how many errors of the type, and the AP50 fixing them all would add (dAP; interval: "
                     "paired bootstrap).</p>")
        dap_ci = td.get("dAP_ci", {})
        parts.append(_table(["error", "count", "dAP"], [[k, str(td["counts"][k]), fmt(td["dAP"][k], dap_ci.get(k))]
                                                         for k in td["counts"]]))
        for split_title, split in (("by relative object size", td["by_size"]), ("by crowding", td["by_crowding"])):
            kinds = list(next(iter(split.values())).keys()) if split else []
            parts.append(f"<p>dAP {split_title} (errors that concern an object):</p>")
            parts.append(_table(["bin", *kinds], [[b, *(fmt(v[k]) for k in kinds)] for b, v in split.items()]))
        for kind, names in td["worst"].items():
            if names:
                parts.append(f"<h3>Worst images: {html.escape(kind)} (white: ground truth; coloured: the detections "
                             "in error, for miss those above the score threshold)</h3><div>" +
                             "".join(f"<img src='{html.escape(n)}' style='width:260px;margin:3px'>" for n in names)
                             + "</div>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>zir analyze</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{padding:2px 10px}"
            "tr:nth-child(even){background:#f2f2f2}</style></head><body>" + "\n".join(parts) + "</body></html>")
    out = out_dir / "report.html"
    out.write_text(page)
    return out


def _by_sev(cells: dict[Any, Any], severity: int) -> Any:
    """A severity's entry of a dict keyed by int (in memory) or str (read back from JSON)."""
    return cells.get(severity, cells.get(str(severity)))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _bins_table(bins: Sequence[dict[str, Any]]) -> str:
    keys = sorted({k for b in bins for k in b["metrics"]}) or ["metric"]
    rows = [[b["name"], str(b["objects"]),
             *(fmt(b["metrics"].get(k), (b.get("ci") or {}).get(k)) for k in keys)] for b in bins]
    return _table(["bin", "objects", *keys], rows)


def _img(path: Path) -> str:
    return f"<img src='{html.escape(path.name)}' style='max-width:100%'>"
