"""``runs/NAME/report.html``: the metrics table, the training curves, and predictions drawn on images."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from zir.analysis.draw import draw_prediction
from zir.data.contract import DetectionPrediction
from zir.engine.checkpoint import read_meta

N_IMAGES = 12
DRAW_SCORE = 0.3  # detections drawn in the report (metrics use every detection)


def write_report(run_dir: Path, n_images: int = N_IMAGES, progress: bool = True) -> Path:
    """Evaluate the run's best weights on its validation data, draw predictions, write report.html."""
    from zir.engine.data import build_datasets, build_loader
    from zir.engine.evaluate import evaluate
    from zir.engine.predictor import find_weights, load

    run_dir = Path(run_dir)
    predictor = load(run_dir)
    cfg = predictor.config
    meta = read_meta(find_weights(run_dir))
    data = build_datasets(cfg.data, seed=cfg.train.seed)
    loader = build_loader(data.val, cfg.data, train=False, seed=cfg.train.seed)
    metrics, metric = evaluate(predictor.model, loader, data.task, data.classes, predictor.device, progress=progress)
    (run_dir / "val_metrics.json").write_text(json.dumps(metrics, indent=1))

    figures: list[tuple[str, str]] = []
    if (run_dir / "curves.png").is_file():
        figures.append(("Training curves", "curves.png"))
    figures += _metric_plots(metric, data.task, data.classes, run_dir)

    pred_dir = run_dir / "predictions"
    pred_dir.mkdir(exist_ok=True)
    thumbs = []
    for i in range(min(n_images, len(data.val))):  # type: ignore[arg-type]
        sample = data.val[i]
        if "bad" in sample:
            continue
        image = sample["image"].as_subclass(torch.Tensor)
        pred = predictor.predict(image)[0]
        if isinstance(pred, DetectionPrediction):  # evaluation keeps low scores; pictures show confident ones
            pred = pred.above(DRAW_SCORE)
        drawn = draw_prediction(image, pred, data.classes, truth=sample.get("label"))
        name = f"predictions/{i:03d}.png"
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(run_dir / name)
        thumbs.append(name)

    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in metrics.items()
                   if isinstance(v, (int, float)))
    figs = "".join(f"<h2>{html.escape(t)}</h2><img src='{src}' style='max-width:100%'>" for t, src in figures)
    imgs = "".join(f"<img src='{src}' style='width:180px;margin:3px;image-rendering:pixelated'>" for src in thumbs)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>zir report: {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td{{padding:2px 12px}}
tr:nth-child(even){{background:#f2f2f2}}</style></head><body>
<h1>zir run <code>{html.escape(str(run_dir))}</code></h1>
<p>model <b>{html.escape(cfg.model)}</b>, task <b>{data.task}</b>, {len(data.classes)} classes
({html.escape(", ".join(data.classes[:20]))}), data <code>{html.escape(cfg.data.path)}</code>,
best epoch {int(meta.get("epoch", 0)) + 1} of {cfg.train.epochs}.</p>
<h2>Validation metrics (best weights)</h2><table>{rows}</table>
{figs}
<h2>Predictions on validation images</h2><div>{imgs}</div>
</body></html>"""
    out = run_dir / "report.html"
    out.write_text(page)
    return out


def _metric_plots(metric: Any, task: str, classes: list[str], run_dir: Path) -> list[tuple[str, str]]:
    from zir.metrics import plots

    out = []
    if task in ("classify", "segment"):
        plots.plot_confusion(metric.confusion_matrix(), classes, run_dir / "confusion_matrix.png")
        what = "images" if task == "classify" else "pixels"
        out.append((f"Confusion matrix of {what} (rows: true class)", "confusion_matrix.png"))
    elif task in ("detect", "instance"):
        plots.plot_pr_curves(metric.pr_curves("bbox"), run_dir / "pr_curves.png")
        out.append(("Precision-recall per class (box IoU 0.5)", "pr_curves.png"))
        plots.plot_confusion(metric.confusion_matrix(), [*classes, "background"], run_dir / "confusion_matrix.png")
        out.append(("Detection confusion matrix (rows: true class; background row = false positives, "
                    "background column = missed objects)", "confusion_matrix.png"))
    return out


def _fmt(v: float) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
