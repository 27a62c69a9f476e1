"""Multi-process training with ``torchrun``: who am I, and helpers that are no-ops in one process.

``torchrun --nproc_per_node N -m zir train ...`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; zir
then initialises the process group (NCCL on CUDA, gloo on the CPU), wraps the model in
DistributedDataParallel and shards the data with DistributedSampler. Logging, checkpoints and the
report are written by rank 0 only.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Join the process group if launched by torchrun; returns whether training is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: object) -> object:
    """Rank 0's value of ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(value: float, device: torch.device) -> float:
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world_size()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
