"""The ``zir`` command: one CLI for every task and mode.

    zir train [CONFIG.yaml] [key=value ...] [--resume RUN]
    zir eval RUN [key=value ...]
    zir predict RUN_OR_MODEL IMAGE|FOLDER|VIDEO|'GLOB' ... [--out DIR] [--backend torch|onnx] [--slice 320]
    zir export RUN [--format pt2|torchscript|onnx]
    zir serve RUN [--port 8000] [--backend torch|onnx]
    zir models
    zir data synth|check|stats|convert ...
    zir augment preview IMAGE --out grid.png
    zir compare RUN_A RUN_B | A/analysis.json B/analysis.json [--out DIR]
    zir analyze RUN [data=PATH] [--quick]
    zir bench detectors DATA [--minutes 5] [--models a,b] [--runs NAME=RUN ...] [--out runs/bench]
    zir demo

Every command has ``--help``. Errors a user can fix print one line (``zir: error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zir.errors import ZirError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except ZirError as e:
        print(f"zir: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zir: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    from zir.config import describe_settings

    p = argparse.ArgumentParser(prog="zir", description="zir: computer vision on PyTorch.")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    t = sub.add_parser("train", help="train a model", formatter_class=raw,
                       description="Train a model. Settings come from an optional YAML file and key=value "
                                   "overrides, e.g.\n  zir train model=convnet data=shapes/ epochs=5\n\n"
                                   "Settings and defaults:\n" + describe_settings())
    t.add_argument("settings", nargs="*", help="[CONFIG.yaml] key=value ...")
    t.add_argument("--resume", metavar="RUN", help="continue the run in RUN (runs/NAME) exactly where it stopped")
    t.add_argument("--skip-bad", action="store_true", help="leave out samples that fail the data checks")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a trained run on its validation data (or data=PATH)")
    e.add_argument("run", help="runs/NAME or a .safetensors file")
    e.add_argument("settings", nargs="*", help="key=value overrides of the data settings, e.g. data=test/")
    e.add_argument("--json", metavar="FILE", help="also write the metrics to FILE")
    e.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="predict on images and draw the results")
    pr.add_argument("model", help="runs/NAME, a .safetensors file, or efficientnet_lite0 (ImageNet top-5)")
    pr.add_argument("inputs", nargs="+", help="image files, folders, videos (.mp4, .avi, .mov, ...) or globs in "
                                              "quotes ('imgs/*.jpg')")
    pr.add_argument("--out", default="predictions",
                    help="output folder (per image a drawn PNG and a JSON; per video NAME.mp4 and NAME.jsonl)")
    pr.add_argument("--conf", type=float, default=None, help="score threshold (detection)")
    pr.add_argument("--batch-size", type=int, default=8, help="images (or video frames) per forward pass")
    pr.add_argument("--skip-bad", action="store_true", help="leave out unreadable images and videos (listed at the end)")
    pr.add_argument("--exist-ok", action="store_true",
                    help="replace files in --out that zir did not write (by default zir refuses)")
    pr.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                    help="onnx: run MODEL's exported graph (zir export MODEL --format onnx, or a .onnx file) with onnxruntime")
    pr.add_argument("--tta", type=int, default=None, metavar="N",
                    help="test-time views instead of the run's (classifiers: 1 or 2 = with the left-right mirror; "
                         "unet / fcn: 1, 2, 4 or 8); torch backend")
    sl = pr.add_argument_group("sliced prediction (SAHI): small objects in large images, detection and instance")
    sl.add_argument("--slice", type=int, metavar="SIZE", help="predict on overlapping SIZE px tiles (e.g. the "
                                                              "model's image_size) and merge their detections")
    sl.add_argument("--overlap", type=float, default=0.2, help="fraction of a tile shared with its neighbour")
    sl.add_argument("--merge", choices=("nmm", "nms"), default="nmm",
                    help="nmm: merge boxes of one object (union, as sahi); nms: keep the best only")
    sl.add_argument("--tiles-only", action="store_true",
                    help="skip the whole-image pass (by default it runs too, for objects larger than a tile)")
    pr.set_defaults(func=cmd_predict)

    x = sub.add_parser("export", help="export a trained model for deployment")
    x.add_argument("run", help="runs/NAME or a .safetensors file")
    x.add_argument("--format", choices=("pt2", "torchscript", "onnx"), default="pt2",
                   help="pt2: torch.export program (default); torchscript (classifiers); onnx (pip install 'zir[export]'); "
                        "each takes uint8 images and holds pre- and post-processing")
    x.add_argument("--out", help="output file (default: RUN/weights/model.{pt2,torchscript.pt,onnx})")
    x.set_defaults(func=cmd_export)

    sv = sub.add_parser("serve", help="serve a trained model over HTTP: POST /predict, GET /health, GET / (a page)")
    sv.add_argument("run", help="runs/NAME, a .safetensors file, or (--backend onnx) an exported .onnx file")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    sv.add_argument("--max-mb", type=float, default=20, help="largest upload accepted, in MiB")
    sv.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image accepted, in pixels")
    sv.set_defaults(func=cmd_serve)

    m = sub.add_parser("models", help="list the models zir can train")
    m.set_defaults(func=cmd_models)

    d = sub.add_parser("data", help="synthesise, check, describe and convert datasets")
    dsub = d.add_subparsers(title="data commands", metavar="COMMAND")
    s = dsub.add_parser("synth", help="write a deterministic synthetic dataset of shapes")
    s.add_argument("--task", default="detect", choices=("classify", "detect", "segment", "instance", "panoptic"))
    s.add_argument("--n", type=int, default=200, help="number of images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=128, help="image side in pixels")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    s.set_defaults(func=cmd_synth)
    c = dsub.add_parser("check", help="list every problem of a dataset; exit status 1 if there are errors")
    c.add_argument("path")
    c.add_argument("--format", default="auto")
    c.add_argument("--no-images", action="store_true", help="do not decode images (faster, fewer checks)")
    c.set_defaults(func=cmd_check)
    st = dsub.add_parser("stats", help="print dataset statistics and plot histograms")
    st.add_argument("path")
    st.add_argument("--format", default="auto")
    st.add_argument("--out", default="stats.png", help="histogram plot file")
    st.set_defaults(func=cmd_stats)
    cv = dsub.add_parser("convert", help="convert a detection dataset between COCO, YOLO and VOC")
    cv.add_argument("src")
    cv.add_argument("dst")
    cv.add_argument("--to", required=True, choices=("coco", "yolo", "voc"))
    cv.add_argument("--from", dest="src_format", default="auto")
    cv.add_argument("--skip-bad", action="store_true", help="drop records with errors instead of stopping")
    cv.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty DST")
    cv.set_defaults(func=cmd_convert)

    a = sub.add_parser("augment", help="look at augmentation")
    asub = a.add_subparsers(title="augment commands", metavar="COMMAND")
    ap = asub.add_parser("preview", help="draw an image under each augmentation family and weather effect")
    ap.add_argument("image")
    ap.add_argument("--out", default="augment_preview.png")
    ap.add_argument("--seed", type=int, default=0)
    ap.set_defaults(func=cmd_augment_preview)

    cmp = sub.add_parser("compare", help="compare two runs' metrics, or two analysis.json files, and the error reduction")
    cmp.add_argument("run_a", help="runs/A, or A/analysis/analysis.json of zir analyze")
    cmp.add_argument("run_b")
    cmp.add_argument("--out", default=None, help="analysis.json files: also write OUT/compare.md and compare.html")
    cmp.set_defaults(func=cmd_compare)

    an = sub.add_parser("analyze", help="how the model copes with distance, crowding and corruptions (report)")
    an.add_argument("run", help="runs/NAME made by zir train")
    an.add_argument("settings", nargs="*", help="data settings, e.g. data=test/ (default: the run's validation data)")
    an.add_argument("--quick", action="store_true", help="fewer zoom factors, NMS values and corruptions")
    an.add_argument("--bootstrap", type=int, default=200, metavar="N", help="resamples per 95%% interval (0: none)")
    an.set_defaults(func=cmd_analyze)

    b = sub.add_parser("bench", help="benchmark models against each other on this machine")
    bsub = b.add_subparsers(title="bench commands", metavar="COMMAND")
    bd = bsub.add_parser(
        "detectors", formatter_class=raw,
        help="train every detector on the same data and budget; chart mAP against ms per image",
        description="Train (or take trained runs of) every detector in the registry on the same data with the\n"
                    "same budget, score all on the same test split (one image at a time, batch 1), and write\n"
                    "OUT/table.md, OUT/results.json and OUT/chart.png (mAP50 and mAP50-95 against ms per\n"
                    "image, one-stage and two-stage marked). Examples:\n"
                    "  zir bench detectors synth --minutes 5 --threads 1\n"
                    "  zir bench detectors raccoon/ --test-split 0.2 --models yolo_v1,faster_rcnn\n"
                    "  zir bench detectors data.yaml --runs faster_rcnn=runs/frcnn --set yolo_v1.lr=1e-3\n"
                    "  zir bench detectors synth --models yolo_v1 --recipe my_yolo.yaml")
    bd.add_argument("data", help="detection dataset (COCO, YOLO, VOC: any format zir reads) or synth "
                                 "(synthetic shapes, training and test scenes from different seeds)")
    bd.add_argument("--test", default="", metavar="PATH",
                    help="a separate test set (default: hold out --test-split of DATA, as zir train's val_split)")
    bd.add_argument("--test-split", type=float, default=0.2, metavar="FRACTION", help="held-out test fraction")
    bd.add_argument("--synth-n", type=int, default=800, metavar="N",
                    help="synth only: training scenes (the test scenes are a quarter as many)")
    bd.add_argument("--minutes", type=float, default=5.0, help="training budget per model (at least one epoch)")
    bd.add_argument("--models", default="all",
                    help="comma list of registry detectors, all (task detect) or none (only --runs)")
    bd.add_argument("--runs", action="extend", nargs="+", default=[], metavar="NAME=RUN_DIR",
                    help="score these trained runs as they are; a NAME among --models is not trained")
    bd.add_argument("--set", dest="sets", action="extend", nargs="+", default=[], metavar="MODEL.KEY=VALUE",
                    help="override a recommended setting of one model, e.g. yolo_v1.lr=1e-3 faster_rcnn.epochs=4")
    bd.add_argument("--recipe", dest="recipes", action="extend", nargs="+", default=[], metavar="FILE",
                    help="train a model by this run config (YAML naming its model) instead of its shipped recipe "
                         "(zir/analysis/bench/recipes/KIND/MODEL.yaml)")
    bd.add_argument("--threads", type=int, default=0, help="torch threads for training and inference (0: default)")
    bd.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    bd.add_argument("--out", default="runs/bench", help="output folder")
    bd.set_defaults(func=cmd_bench_detectors)

    dm = sub.add_parser("demo", help="synthesise data, train for about two minutes, evaluate, write a report")
    dm.add_argument("--minutes", type=float, default=2.0, help="training time budget")
    dm.add_argument("--out", default="runs", help="folder for the demo data and run")
    dm.set_defaults(func=cmd_demo)
    return p


def _split_settings(items: list[str]) -> tuple[str | None, list[str]]:
    if items and "=" not in items[0] and items[0].endswith((".yaml", ".yml")):
        return items[0], items[1:]
    return None, items


def cmd_train(args: argparse.Namespace) -> int:
    from zir.analysis.report import write_report
    from zir.config import load_config
    from zir.engine.trainer import train

    if args.resume:
        if args.settings:
            print("zir: note: settings are ignored with --resume (the run's own config.yaml is used)", file=sys.stderr)
        result = train(load_config(), resume=args.resume, on_end=[write_report])
    else:
        path, overrides = _split_settings(args.settings)
        cfg = load_config(path, overrides + (["data.skip_bad=true"] if args.skip_bad else []))
        result = train(cfg, on_end=[write_report])
    print(f"run: {result.run_dir}\nbest: {json.dumps(_round(result.best_metrics))}\n"
          f"report: {result.run_dir / 'report.html'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from zir.api import evaluate
    from zir.config import parse_override
    from zir.data.output import check_writable

    if args.json:
        check_writable(args.json, "file")
    metrics = evaluate(args.run, **dict(parse_override(s) for s in args.settings))
    for k, v in metrics.items():
        print(f"{k:>24s}  {v:.4f}" if isinstance(v, float) else f"{k:>24s}  {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=1))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from zir.api import predict_to_folder
    from zir.engine.sliced import Slicing
    from zir.errors import ConfigError

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size} must be at least 1")
    slicing = None
    if args.slice is not None:
        slicing = Slicing(size=args.slice, overlap=args.overlap, merge=args.merge, full=not args.tiles_only,
                          batch_size=args.batch_size, **({"conf": args.conf} if args.conf is not None else {}))
        slicing.check()
    model = args.model
    if args.backend == "onnx":
        from zir.export.runtime import OnnxPredictor

        if args.tta is not None:
            raise ConfigError("--tta applies to the torch backend; an exported graph keeps the tta it was exported "
                              "with (export a run trained or loaded with that tta)")
        model = OnnxPredictor(args.model)
    elif args.tta is not None:
        from zir.api import load

        model = load(args.model, tta=args.tta)
    out = predict_to_folder(model, args.inputs, args.out, conf=args.conf, skip_bad=args.skip_bad,
                            exist_ok=args.exist_ok, batch_size=args.batch_size, slicing=slicing)
    print(f"wrote predictions to {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from zir.export import export

    out = export(args.run, args.format, args.out)
    print(f"exported {out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from zir.export.serve import serve

    serve(args.run, args.host, args.port, args.backend, int(args.max_mb * 2**20), args.max_pixels)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from zir.models import MODELS

    width = max(len(n) for n in MODELS)
    for name, spec in MODELS.items():
        print(f"{name:<{width}}  {spec.task:<9}  {spec.summary}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from zir.data.synth import SynthConfig, write_synth

    cfg = SynthConfig(task=args.task, n=args.n, seed=args.seed, image_size=args.size)
    out = write_synth(cfg, Path(args.out), overwrite=args.overwrite)
    print(f"wrote {args.n} {args.task} images to {out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from zir.data.check import check_path

    report = check_path(args.path, format=args.format, open_images=not args.no_images)
    print(report.format_text())
    return 0 if report.ok else 1


def cmd_stats(args: argparse.Namespace) -> int:
    from zir.data.formats import open_dataset
    from zir.data.output import check_writable
    from zir.data.stats import dataset_stats, format_stats, plot_stats

    check_writable(args.out, "file")
    stats = dataset_stats(open_dataset(args.path, format=args.format))
    print(format_stats(stats))
    print(f"histograms: {plot_stats(stats, Path(args.out))}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from zir.data.convert import convert

    out = convert(args.src, args.dst, to=args.to, src_format=args.src_format, overwrite=args.overwrite,
                  skip_bad=args.skip_bad)
    print(f"wrote {args.to} dataset: {out}")
    return 0


def cmd_augment_preview(args: argparse.Namespace) -> int:
    from zir.augment import preview_grid
    from zir.data.image_io import read_image
    from zir.data.output import check_writable

    check_writable(args.out, "file")
    out = preview_grid({"image": read_image(args.image)}, Path(args.out), seed=args.seed)
    print(f"wrote {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from zir.api import compare

    print(compare(args.run_a, args.run_b, out=args.out))
    if args.out is not None:
        print(f"written: {Path(args.out) / 'compare.md'}, {Path(args.out) / 'compare.html'}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from zir.analysis.analyze import analyze
    from zir.config import parse_override

    report = analyze(args.run, quick=args.quick, bootstrap=args.bootstrap,
                     **dict(parse_override(s) for s in args.settings))
    print(f"report: {report}\nnumbers: {report.parent / 'analysis.json'}")
    return 0


def cmd_bench_detectors(args: argparse.Namespace) -> int:
    import shlex

    from zir.analysis.bench import bench_detectors, parse_runs, parse_sets

    names = [m.strip() for m in args.models.split(",") if m.strip() not in ("", "none")]
    models = None if args.models == "all" else names
    # The command as it reproduces the results, every option spelled out, for the table's header.
    parts = ["zir", "bench", "detectors", args.data, "--minutes", f"{args.minutes:g}", "--models", args.models,
             "--threads", str(args.threads), "--device", args.device, "--out", args.out]
    if args.test:
        parts += ["--test", args.test]
    elif args.data != "synth":
        parts += ["--test-split", f"{args.test_split:g}"]
    else:
        parts += ["--synth-n", str(args.synth_n)]
    parts += ["--runs", *args.runs] if args.runs else []
    parts += ["--set", *args.sets] if args.sets else []
    parts += ["--recipe", *args.recipes] if args.recipes else []
    result = bench_detectors(args.data, args.out, models=models, minutes=args.minutes, runs=parse_runs(args.runs),
                             overrides=parse_sets(args.sets), recipes=args.recipes, threads=args.threads,
                             device=args.device,
                             test=args.test, test_split=args.test_split, synth_n=args.synth_n,
                             command=shlex.join(parts))
    print(result.table.read_text())
    print(f"wrote {result.table}, {result.results}, {result.chart}")
    if result.failed:
        print(f"zir: {len(result.failed)} model(s) failed: {', '.join(result.failed)} (see {result.table})",
              file=sys.stderr)
    return 1 if result.failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from zir.api import demo

    report = demo(out=args.out, minutes=args.minutes)
    print(f"\nreport: {report}")
    return 0


def _round(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


if __name__ == "__main__":
    sys.exit(main())
