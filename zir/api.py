"""The Python API, mirroring the CLI (``zir train`` = :func:`train`, ``zir eval`` = :func:`evaluate`, ...).

    import zir
    result = zir.train(model="convnet", data="shapes/", epochs=5)
    model = zir.load(result.run_dir)
    model.predict(["cat.jpg", pil_image, tensor])        # -> list of predictions
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from zir.config import RunConfig, load_config
from zir.data.contract import ClassPrediction, DetectionPrediction, PanopticPrediction, SemanticPrediction
from zir.data.image_io import is_image_file, read_image
from zir.engine.predictor import Predictor, load, run_data
from zir.engine.sliced import Slicing, predict_sliced
from zir.engine.trainer import TrainResult
from zir.errors import ConfigError, DataError

__all__ = ["train", "load", "evaluate", "predict_to_folder", "compare", "demo", "synth", "analyze"]


def train(config: str | Path | RunConfig | None = None, *, resume: str | Path | None = None,
          progress: bool = True, **settings: Any) -> TrainResult:
    """Train a model. ``settings`` are the CLI's ``key=value`` pairs (``model="convnet"``, ``epochs=5``,
    ``data="shapes/"``, ``batch_size=32``, ``model_args={"width": 16}``...), applied over ``config``."""
    from zir.analysis.report import write_report
    from zir.engine.trainer import train as _train

    report = [partial(write_report, progress=progress)]  # report.html when training ends
    if resume is not None:
        return _train(load_config(), resume=resume, on_end=report, progress=progress)
    cfg = config.override(settings) if isinstance(config, RunConfig) else load_config(config, overrides=settings)
    return _train(cfg, on_end=report, progress=progress)


def evaluate(run: str | Path, progress: bool = True, tta: int | None = None, **data_settings: Any) -> dict[str, float]:
    """Evaluate a trained run on its validation data, or on ``data=PATH`` (any readable format); ``tta=N``
    with the model's test-time augmentation set to N views instead of the run's (classifiers: 1 or 2)."""
    from zir.engine.data import build_loader
    from zir.engine.evaluate import evaluate as _evaluate

    predictor = load(run, tta=tta)
    cfg, bundle = run_data(predictor, run, data_settings, "evaluate")
    loader = build_loader(bundle.val, cfg.data, train=False, seed=cfg.train.seed)
    metrics, _ = _evaluate(predictor.model, loader, bundle.task, bundle.classes, predictor.device,
                           progress=progress)
    return metrics


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image and video files named directly, found (recursively, sorted) in the folders given, or matched by
    globs (``"imgs/*.jpg"``, ``"data/**/*.mp4"``: quoted, so that zir expands them, not the shell)."""
    from zir.engine.video import is_video_file

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and (is_image_file(p) or is_video_file(p)))
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(str(item)):
            matched = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            matched = [m for m in matched if m.is_file() and (is_image_file(m) or is_video_file(m))]
            if not matched:
                raise DataError(item, "the pattern matches no image or video file; check the folder and the "
                                      "pattern (quote it, 'imgs/*.jpg', so that zir expands it, not the shell)")
            files += matched
        else:
            raise DataError(item, "no such file or folder")
    if not files:
        raise DataError(", ".join(map(str, inputs)), "no images or videos found (looked for .jpg, .png, .bmp, "
                                                     "..., .mp4, .avi, .mov, ...)")
    return list(dict.fromkeys(files))  # a file named twice (a folder and a glob) is predicted once


def predict_to_folder(model: str | Path | Predictor, inputs: Sequence[str | Path], out: str | Path,
                      conf: float | None = None, skip_bad: bool = False, exist_ok: bool = False,
                      batch_size: int = 8, slicing: Slicing | None = None, progress: bool = True) -> Path:
    """Predict on images and videos and write, per image, the drawn result (PNG) and the prediction (JSON);
    per video, the annotated video (``NAME.mp4``) and one JSON line per frame (``NAME.jsonl``).

    ``inputs`` are files, folders (searched recursively) and globs (:func:`list_images`). Images go to the
    model ``batch_size`` at a time, with a progress bar unless ``progress=False``. ``slicing`` (a
    :class:`~zir.engine.sliced.Slicing`) predicts detectors on overlapping tiles (SAHI), for small
    objects in large images.

    Masks are also written as label PNGs a user can load (output names keep the input's relative path,
    so two ``img.jpg`` in different folders do not clash):

    * semantic segmentation: ``NAME_mask.png``, the class id per pixel (zir's mask-folder format);
    * instance segmentation: ``NAME_instances.png``, 0 = background and ``k`` = the ``k``-th object of the
      JSON (16-bit when there are more than 255);
    * panoptic: ``NAME_panoptic.png`` (COCO panoptic ids) and one ``panoptic.json`` for all images, a COCO
      panoptic file that ``zir data check`` and panopticapi read.

    ``out`` may hold other files: zir writes over only what it wrote there before (listed in
    ``out/.zir-written``) and refuses to replace anything else unless ``exist_ok``; it never writes over
    an input. An unreadable image or video stops the run (DataError naming it) unless ``skip_bad``: then it
    is left out and listed at the end.
    """
    from zir.analysis.draw import draw_prediction
    from zir.data.formats.panoptic import write_coco_panoptic
    from zir.data.output import OwnedFolder
    from zir.engine.video import is_video_file, predict_video

    folder = OwnedFolder(out, exist_ok=exist_ok)  # checked before the model loads: a bad --out fails fast
    if slicing is not None:
        slicing.check()
    files = list_images(inputs)  # before the model loads: a glob matching nothing fails fast
    predictor = model if isinstance(model, Predictor) else load(model)
    if slicing is not None and predictor.task not in ("detect", "instance"):
        raise ConfigError(f"sliced prediction (--slice) needs a detection or instance segmentation model; this is "
                          f"a {predictor.task} model: predict without --slice")
    out = Path(out)
    common = Path(os.path.commonpath([p.resolve().parent for p in files]))
    names = _output_names(files, common, predictor.task)
    inputs_resolved = {p.resolve() for p in files}
    for name in names:
        if (out / name).resolve() in inputs_resolved:
            raise DataError(out / name, "zir would write its prediction over this input; choose another --out")
    folder.claim(names)
    folder.commit()
    panoptic: tuple[list, list] = ([], [])
    skipped: list[str] = []
    images = [p for p in files if not is_video_file(p)]
    bar = tqdm(total=len(images), desc="predict", unit="image", disable=not progress or len(images) < 2)
    for start in range(0, len(images), batch_size):
        chunk: list[tuple[int, Path, torch.Tensor]] = []
        for k, path in enumerate(images[start:start + batch_size], start):
            try:
                chunk.append((k, path, read_image(path).as_subclass(torch.Tensor)))
            except DataError as e:
                _skip_or_raise(e, skip_bad, skipped, path)
        if slicing is not None:
            preds = [predict_sliced(predictor, image, slicing) for _, _, image in chunk]
        else:
            preds = predictor.predict([image for _, _, image in chunk], batch_size=batch_size) if chunk else []
        for (k, path, image), pred in zip(chunk, preds):
            _write_image_prediction(predictor, out, common, k, path, image, pred, conf, panoptic)
        bar.update(len(images[start:start + batch_size]))
    bar.close()
    for path in (p for p in files if is_video_file(p)):
        rel = path.resolve().relative_to(common).with_suffix("")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            n = predict_video(predictor, path, out / f"{rel}.mp4", out / f"{rel}.jsonl", draw_prediction, conf=conf,
                              slicing=slicing, batch_size=batch_size, progress=progress)
        except DataError as e:
            _skip_or_raise(e, skip_bad, skipped, path)
            continue
        print(f"{path}: {n} frames -> {out / rel}.mp4, {out / rel}.jsonl", file=sys.stderr)
    if panoptic[0]:
        write_coco_panoptic(out / "panoptic.json", *panoptic, predictor.classes, predictor.model.thing_classes)
    if skipped:
        kind = "file(s)" if any(is_video_file(p) for p in files) else "image(s)"
        print(f"zir: skipped {len(skipped)} unreadable {kind} of {len(files)}:\n  " + "\n  ".join(skipped),
              file=sys.stderr)
    return out


def _skip_or_raise(e: DataError, skip_bad: bool, skipped: list[str], path: Path) -> None:
    if not skip_bad:
        raise DataError(e.file, f"{e.detail}; or pass --skip-bad (skip_bad=True) to leave out unreadable files",
                        e.where) from None
    tqdm.write(f"zir: skipped {e}", file=sys.stderr)  # above the progress bar, not through it
    skipped.append(str(path))


def _write_image_prediction(predictor: Predictor, out: Path, common: Path, k: int, path: Path, image: torch.Tensor,
                            pred: Any, conf: float | None, panoptic: tuple[list, list]) -> None:
    """The files of one image: drawn PNG, JSON, and the task's label PNG (see :func:`predict_to_folder`)."""
    from zir.analysis.draw import draw_prediction
    from zir.data.formats.panoptic import segments_info, write_panoptic_png
    from zir.data.image_io import save_png

    if conf is not None and isinstance(pred, DetectionPrediction):
        pred = pred.above(conf)
    rel = path.resolve().relative_to(common).with_suffix("")
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    drawn = draw_prediction(image, pred, predictor.classes)
    Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(out / f"{rel}.png")
    record = {"image": str(path), **pred.to_dict(predictor.classes)}
    if isinstance(pred, ClassPrediction):  # a person asked: print the top-5 at once
        top = ", ".join(f"{predictor.classes[i]} {s:.3f}" for i, s in pred.topk(5))
        print(f"{path}: {top}")
    elif isinstance(pred, SemanticPrediction):
        dtype = np.uint8 if len(predictor.classes) <= 256 else np.uint16
        save_png(pred.semantic.cpu().numpy().astype(dtype), out / f"{rel}_mask.png")
    elif isinstance(pred, DetectionPrediction) and pred.masks is not None:
        ids = np.zeros(pred.masks.shape[-2:], np.int64)
        for i, m in reversed(list(enumerate(pred.masks.cpu().numpy()))):  # best on top
            ids[m] = i + 1
        save_png(ids.astype(np.uint8 if len(pred.masks) < 256 else np.uint16), out / f"{rel}_instances.png")
    elif isinstance(pred, PanopticPrediction):
        ids = pred.ids.cpu().numpy()
        write_panoptic_png(ids, out / f"{rel}_panoptic.png")
        panoptic[0].append({"id": k, "file_name": str(path.resolve().relative_to(common)),
                            "height": int(ids.shape[0]), "width": int(ids.shape[1])})
        panoptic[1].append({"image_id": k, "file_name": f"{rel}_panoptic.png",
                            "segments_info": segments_info(ids, pred.segments)})
    (out / f"{rel}.json").write_text(json.dumps(record, indent=1))


def _output_names(files: list[Path], common: Path, task: str) -> list[str]:
    """Every name :func:`predict_to_folder` may write for ``files`` (relative to the output folder).

    Raises:
        DataError: two inputs would write the same name (``a.jpg`` and ``a.png`` in one folder).
    """
    from zir.engine.video import is_video_file

    extra = {"segment": ["_mask.png"], "instance": ["_instances.png"], "panoptic": ["_panoptic.png"]}
    names = ["panoptic.json"] if task == "panoptic" else []
    owner: dict[str, Path] = {}
    for path in files:
        rel = path.resolve().relative_to(common).with_suffix("").as_posix()
        suffixes = (".mp4", ".jsonl") if is_video_file(path) else (".png", ".json", *extra.get(task, []))
        for name in (f"{rel}{suffix}" for suffix in suffixes):
            if name in owner:
                raise DataError(path, f"its prediction would be written as {name}, as that of {owner[name]}; "
                                      "predict the two in separate runs (another --out)")
            owner[name] = path
            names.append(name)
    return names


def analyze(run: str | Path, quick: bool = False, bootstrap: int = 200, progress: bool = True,
            **data_settings: Any) -> Path:
    """``zir analyze``: distance, crowding and corruptions for a trained run; returns
    ``run/analysis/report.html`` (numbers in ``analysis.json`` next to it). See :mod:`zir.analysis.analyze`."""
    from zir.analysis.analyze import analyze as _analyze

    return _analyze(run, quick=quick, bootstrap=bootstrap, progress=progress, **data_settings)


def _run_metrics(run: str | Path) -> dict[str, float]:
    from zir.engine.checkpoint import read_meta
    from zir.engine.predictor import find_weights

    run = Path(run)
    if (run / "val_metrics.json").is_file():
        return json.loads((run / "val_metrics.json").read_text())
    return read_meta(find_weights(run)).get("metrics", {})


def compare(run_a: str | Path, run_b: str | Path, out: str | Path | None = None) -> str:
    """Both runs' metrics side by side, and the error reduction of B over A for accuracy-like metrics.
    Given two ``analysis.json`` files of ``zir analyze``: the three questions and TIDE side by side with
    their intervals (:func:`zir.analysis.compare.compare`; ``out``: a folder for compare.md / compare.html)."""
    from zir.metrics.classification import error_reduction

    if str(run_a).endswith(".json") or str(run_b).endswith(".json"):
        from zir.analysis.compare import compare as compare_analyses

        return compare_analyses(run_a, run_b, out=out)

    a, b = _run_metrics(run_a), _run_metrics(run_b)
    keys = [k for k in a if k in b and isinstance(a[k], (int, float))]
    lines = [f"{'metric':>24s}  {'A':>9s}  {'B':>9s}  error reduction B vs A",
             f"{'':>24s}  {Path(run_a).name[:9]:>9s}  {Path(run_b).name[:9]:>9s}"]
    for k in keys:
        line = f"{k:>24s}  {a[k]:9.4f}  {b[k]:9.4f}"
        if (k in ("accuracy", "top5", "macro_f1", "miou", "pixel_accuracy") or "AP" in k) and a[k] < 1:
            line += f"  {error_reduction(1 - a[k], 1 - b[k]):+.1f}%  (error {1 - a[k]:.3f} -> {1 - b[k]:.3f})"
        lines.append(line)
    return "\n".join(lines)


def synth(task: str = "detect", n: int = 200, seed: int = 0, out: str | Path = "shapes", image_size: int = 128) -> Path:
    """Write a synthetic dataset (see ``zir data synth``)."""
    from zir.data.synth import SynthConfig, write_synth

    return write_synth(SynthConfig(task=task, n=n, seed=seed, image_size=image_size), Path(out))


def demo(out: str | Path = "runs", minutes: float = 2.0) -> Path:
    """The main job on built-in data: synthesise shapes, train a detector for ``minutes``, evaluate,
    draw its predictions and write ``runs/demo/report.html``.

    The demo's scenes are easier than ``zir data synth``'s defaults (up to 4 objects of 15-50% of the
    side) so that a CPU can learn something visible in two minutes: Faster R-CNN on the pretrained
    EfficientNet-Lite0 backbone (offline ImageNet weights), 128 px images.
    """
    from zir.data.synth import DEMO_SCENES, SynthConfig, write_synth

    out = Path(out)
    data_dir = out / "demo-data" / "shapes-detect"
    if not (data_dir / "annotations.json").is_file():
        print(f"synthesising 400 shape images in {data_dir}")
        cfg = SynthConfig(task="detect", n=400, seed=0, image_size=128, **DEMO_SCENES)
        write_synth(cfg, data_dir, overwrite=True)
    run_dir = out / "demo"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo's own previous run; nothing of the user's
    t0 = time.time()
    result = train(model="faster_rcnn", data=str(data_dir), project=str(out), name="demo", image_size=128,
                   batch_size=8, epochs=4, lr=3e-4, warmup_epochs=0.3, time_limit=minutes,
                   model_args={"roi_batch_size": 64, "frozen_blocks": 3})
    print(f"trained {result.epochs_done} epochs in {time.time() - t0:.0f} s; best validation "
          f"mAP50 {result.best_metrics.get('bbox/AP50', float('nan')):.3f}, "
          f"mAP50-95 {result.best_metrics.get('bbox/AP', float('nan')):.3f}")
    examples = sorted((data_dir / "images").glob("*.png"))[:6]
    predict_to_folder(result.run_dir, examples, result.run_dir / "predict-examples", conf=0.3)
    return result.run_dir / "report.html"
