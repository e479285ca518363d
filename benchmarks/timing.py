"""Side-by-side timing shared by the benchmarks: every method runs the same batches, in an
order rotated each round, so drift in the machine's speed falls on all methods alike."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(methods: dict[str, Callable[[Any], Any]], batches: Sequence[Any], rounds: int,
                device: str, deadline: float | None = None,
                peak_memory: dict[str, float] | None = None) -> dict[str, list[float]]:
    """Seconds per batch of each method in each round (after one warm-up call each).

    ``deadline`` (a ``time.monotonic()`` value): start no round after it, once one round is
    done, so a time-boxed run keeps what it measured. ``peak_memory``: filled with each
    method's peak allocated CUDA memory in GiB over its timed rounds (CUDA devices only)."""
    for fn in methods.values():  # warm-up: allocator, first-call overheads
        fn(batches[0])
    times: dict[str, list[float]] = {m: [] for m in methods}
    names = list(methods)
    cuda = device.startswith("cuda")
    for r in range(rounds):
        if r and deadline is not None and time.monotonic() > deadline:
            print(f"time budget reached: stopped after {r} rounds", flush=True)
            break
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            if cuda and peak_memory is not None:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for b in batches:
                methods[name](b)
            sync(device)
            times[name].append((time.perf_counter() - t0) / len(batches))
            if cuda and peak_memory is not None:
                peak_memory[name] = max(peak_memory.get(name, 0.0),
                                        torch.cuda.max_memory_allocated() / 2**30)
            print(f"round {r} {name}: {times[name][-1] * 1e3:.0f} ms/step", flush=True)
    return times
