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
                device: str) -> dict[str, list[float]]:
    """Seconds per batch of each method in each round (after one warm-up call each)."""
    for fn in methods.values():  # warm-up: allocator, first-call overheads
        fn(batches[0])
    times: dict[str, list[float]] = {m: [] for m in methods}
    names = list(methods)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync(device)
            t0 = time.perf_counter()
            for b in batches:
                methods[name](b)
            sync(device)
            times[name].append((time.perf_counter() - t0) / len(batches))
            print(f"round {r} {name}: {times[name][-1] * 1e3:.0f} ms/step", flush=True)
    return times
