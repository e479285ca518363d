"""Confidence intervals: every number the toolkit reports carries one.

Percentile bootstrap over items (questions, prompts, samples): resampling the unit that was
actually drawn, with a fixed seed so a re-draw of a figure gives the same interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap confidence interval."""

    mean: float
    lo: float
    hi: float
    n: int
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}] (n={self.n})"


def bootstrap(values: Sequence[float] | np.ndarray, n_boot: int = 2000, level: float = 0.95,
              seed: int = 0, stat: Callable[[np.ndarray], np.ndarray] | None = None) -> Estimate:
    """Percentile bootstrap CI of the mean (or of ``stat`` applied along axis 1 of the
    resampled matrix)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, level)
    point = float(v.mean()) if stat is None else float(stat(v[None])[0])
    if v.size == 1:
        return Estimate(point, point, point, 1, level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    samples = v[idx].mean(1) if stat is None else stat(v[idx])
    a = (1 - level) / 2
    lo, hi = np.quantile(samples, [a, 1 - a])
    return Estimate(point, float(lo), float(hi), int(v.size), level)


def paired_difference(a: Sequence[float], b: Sequence[float], **kw) -> Estimate:
    """CI of mean(a − b) over paired items (the same questions under two conditions)."""
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.shape != b_.shape:
        raise ValueError(f"paired values need equal shapes, got {a_.shape} and {b_.shape}")
    return bootstrap(a_ - b_, **kw)


def proportion(successes: Sequence[bool], **kw) -> Estimate:
    """A rate with a bootstrap CI (e.g. misaligned answers among coherent ones)."""
    return bootstrap(np.asarray(successes, dtype=np.float64), **kw)
