"""PyTorch distributed, as torchrun starts it: who this process is, and the few collectives the
toolkit needs (capture shards items across ranks, SAE training averages gradients with DDP).

Nothing here starts processes: ``torchrun --nproc_per_node N -m persona_probe.cli …`` does, and
the CLI calls ``init_from_env`` once. Without torchrun every function answers for a single
process, so library code calls them unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from persona_probe.errors import PersonaProbeError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def info() -> DistInfo:
    """This process's place in the initialised process group (rank 0 of 1 without one)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


def init_from_env(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1): NCCL when
    this process drives a CUDA device, gloo otherwise. A no-op for a plain single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return info()
    if not dist.is_available():
        raise PersonaProbeError("this PyTorch build has no torch.distributed; run without "
                                "torchrun, or install a build with distributed support")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info()


def device_for_rank(device: str) -> str:
    """``auto``/``cuda`` under torchrun means this rank's own GPU (cuda:LOCAL_RANK)."""
    d = info()
    if d.active and torch.cuda.is_available() and device in ("auto", "cuda"):
        return f"cuda:{d.local_rank}"
    return device


def barrier() -> None:
    if info().active:
        dist.barrier()


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s value of ``obj`` on every rank (any picklable object we built ourselves;
    this carries decisions such as 'the store is already complete', never file contents)."""
    if not info().active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    d = info()
    if not d.active:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def raise_if_any(error: BaseException | None) -> None:
    """Collective: when any rank failed, every rank raises (the failing rank its own error), so
    no rank waits forever at the next barrier."""
    errors = all_gather(None if error is None else f"rank {info().rank}: {error}")
    if error is not None:
        raise error
    failed = [e for e in errors if e]
    if failed:
        raise PersonaProbeError("another rank failed: " + "; ".join(failed))


def balanced_ranges(costs: list[int], parts: int) -> list[tuple[int, int]]:
    """Split ``costs`` (in order) into ``parts`` contiguous ranges of about equal total cost.

    Contiguous, so that concatenating the ranks' outputs in rank order reproduces the
    single-process order exactly."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    total = sum(costs)
    bounds, acc, k = [0], 0, 1
    for i, c in enumerate(costs):
        acc += c
        while k < parts and acc >= total * k / parts:
            bounds.append(i + 1)
            k += 1
    while len(bounds) < parts:
        bounds.append(len(costs))
    bounds.append(len(costs))
    return [(bounds[r], bounds[r + 1]) for r in range(parts)]
