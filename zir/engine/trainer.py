"""The training loop: one readable function for every task.

    for each epoch:
        for each batch:  losses = model.loss(images, targets); loss = sum(losses) / accumulate
                         backward; every `accumulate` micro-batches: clip, optimizer step, schedule step
        evaluate -> log -> checkpoint (last, best) -> callbacks -> early stop?

Only evaluation, checkpointing and logging are pluggable (``callbacks``); there is no trainer class to
subclass. Determinism: the data order of epoch ``e`` depends only on ``(seed, e)`` and the random
generators are re-seeded from ``(seed, e)`` at every epoch start, so a run killed after epoch ``k`` and
resumed ends with the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import zir
from zir.config import RunConfig
from zir.engine import distributed as dist
from zir.engine.checkpoint import (
    discard_untrained,
    load_state,
    load_weights,
    new_run_dir,
    read_meta,
    save_last,
    save_weights,
)
from zir.engine.data import Batch, build_datasets, build_loader
from zir.engine.evaluate import MONITOR, autocast, evaluate
from zir.engine.logger import RunLogger
from zir.errors import CheckpointError, ConfigError, TrainingError
from zir.models import build_model, get_spec
from zir.models.base import ZirModel

Callback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """What :func:`train` returns: where the run is and how it ended."""

    run_dir: Path
    best_metrics: dict[str, float]
    epochs_done: int
    stopped_early: bool


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{dist.local_rank()}" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={spec} but CUDA is not available here; use device=cpu")
    return torch.device(spec)


def make_run_dir(cfg: RunConfig) -> Path:
    """``project/name``, or ``name-2``, ``name-3``... when it exists (unless ``exist_ok``)."""
    base = Path(cfg.project) / cfg.name
    run_dir, i = base, 1
    while run_dir.exists() and not cfg.exist_ok:
        i += 1
        run_dir = base.with_name(f"{cfg.name}-{i}")
    return new_run_dir(run_dir)  # checked writable before the data is read; removed if it never trains


def build_optimizer(model: ZirModel, cfg: RunConfig) -> torch.optim.Optimizer:
    t = cfg.train
    groups = model.param_groups(t.lr, t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay)
    raise ConfigError(f"train.optimizer must be adamw or sgd, got {t.optimizer!r}")


def cosine_with_warmup(warmup_steps: int, total_steps: int, final: float) -> Callable[[int], float]:
    """LR factor per optimizer step: linear 0.01 -> 1 over warm-up, then cosine 1 -> ``final``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@discard_untrained
def train(cfg: RunConfig, *, resume: str | Path | None = None, callbacks: list[Callback] | None = None,
          progress: bool = True) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; with ``resume=RUN_DIR`` continue that run exactly.

    Returns:
        :class:`TrainResult`. The run folder holds config.yaml, weights/, metrics.jsonl, results.csv,
        curves.png and report.html.
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise CheckpointError(f"{run_dir}: not a zir run folder (no config.yaml); pass runs/NAME")
        from zir.config import load_config

        cfg = load_config(run_dir / "config.yaml")
    t = cfg.train
    device = select_device(t.device)
    distributed = dist.init_from_env(device)
    rank, world = dist.rank(), dist.world_size()
    if t.threads:
        torch.set_num_threads(t.threads)
    if resume is None:
        run_dir = Path(dist.broadcast_object(make_run_dir(cfg) if dist.is_main() else None))  # type: ignore[arg-type]
    main = dist.is_main()

    if cfg.data.path == "synth":  # data=synth task=detect (a derived config: the caller's is not changed)
        cfg = cfg.override({"data.path": f"synth:{cfg.task or 'classify'}"})
    data = build_datasets(cfg.data, seed=t.seed)
    if cfg.task and cfg.task != data.task:
        raise ConfigError(f"task={cfg.task} but {cfg.data.path} is a {data.task} dataset")
    train_loader = build_loader(data.train, cfg.data, train=True, seed=t.seed, rank=rank, world=world)
    val_loader = build_loader(data.val, cfg.data, train=False, seed=t.seed)

    seed_everything(t.seed)  # identical initial weights on every rank
    if data.thing_classes is not None and "thing_classes" in get_spec(cfg.model).config.__dataclass_fields__:
        # panoptic: the data says what is stuff (a derived config: the caller's is not changed)
        cfg = cfg.override({"model_args.thing_classes": list(data.thing_classes)})
    model = build_model(cfg.model, len(data.classes), cfg.data.image_size, cfg.model_args).to(device)
    if data.task != model.task:
        raise ConfigError(f"model {cfg.model!r} is for {model.task}, but {cfg.data.path} is a {data.task} dataset")
    fit: ZirModel = model  # what the loop trains and evaluates; the checkpoints always hold `model`
    if getattr(model, "trains_on_features", False):  # transfer=features: the backbone runs once, the head trains
        from zir.engine.features import HeadOnFeatures, feature_loaders

        train_loader, val_loader = feature_loaders(model, data, cfg, device, run_dir / "features.safetensors",
                                                   reuse_cache=resume is not None, rank=rank, world=world,
                                                   progress=progress and main)
        fit = HeadOnFeatures(model)  # type: ignore[arg-type]
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = max(1, math.ceil(len(train_loader) / t.accumulate))
    schedule = cosine_with_warmup(round(t.warmup_epochs * steps_per_epoch), t.epochs * steps_per_epoch, t.final_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    scaler = torch.amp.GradScaler(device.type, enabled=t.amp == "fp16")

    start_epoch, best, bad_epochs, best_metrics = 0, -math.inf, 0, {}
    logger = RunLogger(run_dir)
    if resume is not None:
        state = load_state(run_dir / "weights" / "last_state.pt")
        if read_meta(run_dir / "weights" / "last.safetensors").get("epoch") != state["epoch"]:
            raise CheckpointError(f"{run_dir}/weights: last.safetensors and last_state.pt are from different "
                                  "epochs; the run was interrupted while saving. Start it again.")
        load_weights(model, run_dir / "weights" / "last.safetensors", get_spec(cfg.model).renames)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best, bad_epochs = state["epoch"] + 1, state["best"], state["bad_epochs"]
        best_metrics = read_meta(run_dir / "weights" / "best.safetensors").get("metrics", {}) \
            if (run_dir / "weights" / "best.safetensors").is_file() else {}
        if main:
            logger.resume(last_epoch=state["epoch"] + 1)  # rows count epochs from 1
    elif main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
        for stale in ("metrics.jsonl", "results.csv"):  # exist_ok reuses the folder: start the logs afresh
            (run_dir / stale).unlink(missing_ok=True)

    net: nn.Module = LossOf(fit)
    if distributed:
        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)

    monitor = MONITOR[data.task]
    meta = {"config": cfg.to_dict(), "classes": data.classes, "task": data.task, "zir_version": zir.__version__}
    skipped: list[str] = [str(p) for p in data.problems if p.severity == "error"]  # dropped by skip_bad
    t_start, stopped_early, epoch = time.time(), False, start_epoch - 1
    for epoch in range(start_epoch, t.epochs):
        seed_everything(t.seed * 1_000_003 + epoch * 1009 + rank)
        train_loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        model.train()
        if hasattr(model, "set_epoch"):  # e.g. the classifier's freeze_epochs: state from the epoch number
            model.set_epoch(epoch)
        sums: dict[str, float] = {}
        n_images, t_epoch = 0, time.time()
        # A model trained in closed form instead of by gradient steps (R-CNN: cached CNN features, then
        # SVMs and ridge regressors) has `fit`; its epoch is that call, and evaluation and checkpoints follow.
        fitted = model.fit(data.train, run_dir, progress=progress and main) if hasattr(model, "fit") else None
        bar = tqdm(train_loader if fitted is None else [], desc=f"epoch {epoch + 1}/{t.epochs}",
                   disable=not (progress and main), leave=False)
        for i, batch in enumerate(bar):
            batch: Batch
            skipped += batch.skipped
            if not batch.targets:
                continue
            batch = batch.to(device)
            step_now = (i + 1) % t.accumulate == 0 or i + 1 == len(train_loader)
            # DDP: all-reduce gradients only on the micro-batch that steps (same result, less traffic).
            sync = net.no_sync() if distributed and not step_now else contextlib.nullcontext()
            with sync:
                with autocast(device, t.amp):
                    losses = net(batch.images, batch.targets)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    terms = ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in losses.items())
                    raise TrainingError(f"loss is {loss.item()} ({terms}) at epoch {epoch + 1}, batch {i} "
                                        f"(optimizer step {scheduler.last_epoch}); the last good checkpoint "
                                        f"is kept in {run_dir}/weights. Lower train.lr, or check the data "
                                        "with `zir data check`")
                scaler.scale(loss / t.accumulate).backward()
            if step_now:
                if t.clip_grad > 0:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            n_images += len(batch.targets)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(batch.targets)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}", img_s=f"{n_images * world / (time.time() - t_epoch):.0f}")

        last_epoch = epoch + 1 == t.epochs
        out_of_time = t.time_limit > 0 and (time.time() - t_start) / 60 >= t.time_limit
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        row.update({f"train/{k}": dist.all_reduce_mean(v / max(n_images, 1), device) for k, v in sums.items()})
        row.update({f"train/{k}": v for k, v in (fitted or {}).items()})
        row["images_per_s"] = n_images * world / (time.time() - t_epoch)
        metrics: dict[str, float] = {}
        if main and ((epoch + 1) % t.eval_every == 0 or last_epoch or out_of_time):
            metrics, _ = evaluate(fit, val_loader, data.task, data.classes, device, t.amp, progress)
            row.update({f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        row["time_s"] = time.time() - t_start

        if main:
            improved = monitor in metrics and metrics[monitor] > best
            if improved:
                best, bad_epochs, best_metrics = metrics[monitor], 0, metrics
                save_weights(model, run_dir / "weights" / "best.safetensors",
                             {**meta, "epoch": epoch, "metrics": metrics})
            elif metrics:
                bad_epochs += 1
            state = {"epoch": epoch, "best": best, "bad_epochs": bad_epochs, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                     "torch_rng": torch.get_rng_state()}
            save_last(run_dir / "weights", model, state, {**meta, "epoch": epoch, "metrics": metrics})
            logger.log(row)
            tqdm.write(_summary(row, monitor)) if progress else None
            for cb in callbacks or []:
                cb({"epoch": epoch, "row": row, "metrics": metrics, "run_dir": run_dir, "model": model})
        stop = (t.patience > 0 and bad_epochs >= t.patience) or out_of_time
        stopped_early = bool(dist.broadcast_object(stop))
        if stopped_early:
            break

    if main and skipped:
        skipped = sorted(set(skipped))
        tqdm.write(f"skipped {len(skipped)} bad samples (data.skip_bad=true):\n  " + "\n  ".join(skipped))
    if main:
        from zir.analysis.report import write_report

        logger.plot()
        write_report(run_dir, progress=progress)
    dist.barrier()
    dist.cleanup()
    return TrainResult(run_dir, best_metrics, epoch + 1, stopped_early)


class LossOf(nn.Module):
    """``forward`` = ``model.loss``: DistributedDataParallel syncs gradients only for work done in
    ``forward``, so the loss must be computed through it."""

    def __init__(self, model: ZirModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.model.loss(images, targets)


def _summary(row: dict[str, Any], monitor: str) -> str:
    parts = [f"epoch {row['epoch']}"]
    parts += [f"{k.removeprefix('train/')} {v:.4f}" for k, v in row.items() if k.startswith("train/")]
    if f"val/{monitor}" in row:
        parts.append(f"val {monitor} {row[f'val/{monitor}']:.4f}")
    parts.append(f"{row['images_per_s']:.0f} img/s")
    return " | ".join(parts)
