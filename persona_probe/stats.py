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


def cluster_bootstrap(values: Sequence[float] | np.ndarray, clusters: Sequence[object],
                      n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """CI of the pooled mean when rows come in clusters (answers sampled per question):
    whole clusters are resampled, never rows as if they were independent. ``n`` is the number
    of clusters."""
    v = np.asarray(values, dtype=np.float64)
    c = np.asarray([str(x) for x in clusters])
    if len(c) != len(v):
        raise ValueError(f"{len(v)} values but {len(c)} cluster labels")
    keep = ~np.isnan(v)
    v, c = v[keep], c[keep]
    if v.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, level)
    uniq, inv = np.unique(c, return_inverse=True)
    sums = np.bincount(inv, weights=v, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    point = float(v.mean())
    if len(uniq) == 1:
        return Estimate(point, point, point, 1, level)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
    samples = sums[idx].sum(1) / counts[idx].sum(1)
    a = (1 - level) / 2
    lo, hi = np.quantile(samples, [a, 1 - a])
    return Estimate(point, float(lo), float(hi), int(len(uniq)), level)


# --- seeds × questions ---------------------------------------------------------------------

@dataclass(frozen=True)
class CrossedEstimate:
    """An estimate over a crossed design (every seed answered the same questions), stored in
    the one form results files use: {mean, lo, hi, n_seeds, n_items, method}. ``per_seed``
    keeps each seed's own point estimate, so a reader can check that the seeds agree in sign."""

    mean: float
    lo: float
    hi: float
    n_seeds: int
    n_items: int
    method: str
    per_seed: tuple[float, ...] = ()
    level: float = 0.95

    @property
    def signs_agree(self) -> bool:
        return bool(self.per_seed) and (all(v > 0 for v in self.per_seed)
                                        or all(v < 0 for v in self.per_seed))

    def excludes(self, value: float) -> bool:
        return self.lo > value or self.hi < value

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["per_seed"] = list(self.per_seed)
        return d

    def __str__(self) -> str:
        return (f"{self.mean:+.3f} [{self.lo:+.3f}, {self.hi:+.3f}] "
                f"({self.n_seeds} seeds × {self.n_items} items)")


def _crossed_weights(n_seeds: int, n_items: int, n_boot: int, seed: int,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Resampling weights (n_boot, S) and (n_boot, Q): seeds and items drawn independently,
    with replacement; a drawn cell (s, q) counts w_s · w_q. One seed is not resampled."""
    rng = np.random.default_rng(seed)

    def draw(n: int) -> np.ndarray:
        if n == 1:
            return np.ones((n_boot, 1))
        idx = rng.integers(0, n, size=(n_boot, n))
        return np.stack([np.bincount(row, minlength=n) for row in idx]) / n
    return draw(n_seeds), draw(n_items)


def crossed_bootstrap(cells: Sequence[Sequence[float]] | np.ndarray,
                      denominator: Sequence[Sequence[float]] | np.ndarray | None = None,
                      n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                      ) -> CrossedEstimate:
    """Two-way bootstrap over a (seeds × items) table: seeds and items are resampled
    independently and the drawn cells averaged (never resampling dependent rows as if they
    were independent). With ``denominator`` (same shape) the estimate is a ratio of the
    resampled means, e.g. the share of a gap an edit removes."""
    num = np.atleast_2d(np.asarray(cells, dtype=np.float64))
    if denominator is None:
        return _crossed([num], lambda m: m, n_boot, level, seed, "")
    den = np.atleast_2d(np.asarray(denominator, np.float64))
    if den.shape != num.shape:
        raise ValueError(f"numerator {num.shape} and denominator {den.shape} differ in shape")
    return _crossed([num, den], lambda n, d: n / d, n_boot, level, seed, "ratio of means, ")


def crossed_statistic(tables: Sequence[np.ndarray], fn: Callable[..., np.ndarray],
                      n_boot: int = 2000, level: float = 0.95, seed: int = 0,
                      what: str = "a function of means") -> CrossedEstimate:
    """A statistic of several (seeds × items) tables' means that is not a ratio of means (e.g.
    removal minus the *size* of the base's shift), with the two-way bootstrap: each draw
    reweights seeds and items once, shared by every table, so the tables stay paired; ``fn``
    takes one array of means per table (vectorised over draws) and returns the statistic."""
    arrs = [np.atleast_2d(np.asarray(t, dtype=np.float64)) for t in tables]
    if not arrs or any(a.shape != arrs[0].shape for a in arrs):
        raise ValueError(f"tables must share one (seeds, items) shape; got "
                         f"{[a.shape for a in arrs]}")
    return _crossed(arrs, fn, n_boot, level, seed, f"{what}, ")


def _crossed(arrs: list[np.ndarray], fn: Callable[..., np.ndarray], n_boot: int, level: float,
             seed: int, prefix: str) -> CrossedEstimate:
    """The one two-way bootstrap behind both: ``fn`` of the tables' means, at the point, per
    seed and per draw (every draw's seed and item weights shared by all tables)."""
    if any(np.isnan(a).any() for a in arrs):
        raise ValueError("a crossed design needs every (seed, item) cell; found NaN")
    S, Q = arrs[0].shape
    ws, wq = _crossed_weights(S, Q, n_boot, seed)
    samples = np.asarray(fn(*(np.einsum("bs,sq,bq->b", ws, a, wq) for a in arrs)), np.float64)
    point = float(np.asarray(fn(*(np.array([a.mean()]) for a in arrs)))[0])
    per_seed = np.asarray(fn(*(a.mean(1) for a in arrs)), np.float64)
    a = (1 - level) / 2
    lo, hi = np.quantile(samples, [a, 1 - a])
    method = (f"{prefix}two-way percentile bootstrap over seeds × items ({n_boot} draws)"
              if S > 1 else f"{prefix}percentile bootstrap over items, one seed ({n_boot} draws)")
    return CrossedEstimate(point, float(lo), float(hi), S, Q, method,
                           tuple(float(v) for v in per_seed), level)


def crossed_correlation(x: np.ndarray, y: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                        seed: int = 0, method: str = "pearson",
                        control: np.ndarray | None = None) -> CrossedEstimate:
    """Correlation across conditions of two measures given per (condition, seed, item) cell,
    with the two-way bootstrap over seeds × items: each draw reweights seeds and items (shared
    by every condition, so the conditions stay paired), takes each condition's weighted mean of
    both measures and correlates the condition means.

    NaN cells of ``y`` (e.g. no coherent generation) carry no weight, and the same cells are
    dropped from ``x``, so both means of a condition come from the same cells. ``x`` may be
    (conditions, 1, items) for a measure with no seed dependence (teacher-forced), broadcast
    over ``y``'s seeds. With ``control`` (same shape as ``y``, e.g. the coherent fraction) the
    estimate is the partial correlation: both condition means are residualised on the control's
    condition means (least squares with an intercept) before correlating. A draw in which a
    condition has no weight is dropped; the share dropped is in ``method``."""
    x, y = np.array(x, np.float64), np.asarray(y, np.float64)     # x is copied: masked below
    if x.ndim != 3 or y.ndim != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"need (conditions, seeds, items) arrays, got {x.shape} and {y.shape}")
    x = np.array(np.broadcast_to(x, y.shape)) if x.shape[1] == 1 else x
    if x.shape != y.shape:
        raise ValueError(f"x {x.shape} and y {y.shape} differ in seeds")
    x[np.isnan(y)] = np.nan
    z = None if control is None else np.asarray(control, np.float64)
    if z is not None and z.shape != y.shape:
        raise ValueError(f"control {z.shape} must have y's shape {y.shape}")
    C, S, Q = y.shape
    if C < 3 + (z is not None):
        raise ValueError("a correlation across conditions needs >= 3 conditions (4 with a "
                         "control)")
    ws, wq = _crossed_weights(S, Q, n_boot, seed)

    def ranks(a: np.ndarray) -> np.ndarray:
        from scipy.stats import rankdata   # average ranks: ties share one rank

        r = rankdata(np.nan_to_num(a), axis=-1)
        return np.where(np.isnan(a).any(-1, keepdims=True), np.nan, r)

    def resid(a: np.ndarray, c: np.ndarray) -> np.ndarray:
        cc = c - c.mean(-1, keepdims=True)
        beta = (cc * (a - a.mean(-1, keepdims=True))).sum(-1, keepdims=True) / np.maximum(
            (cc * cc).sum(-1, keepdims=True), 1e-12)
        return a - a.mean(-1, keepdims=True) - beta * cc

    def corr(a: np.ndarray, b: np.ndarray, c: np.ndarray | None) -> np.ndarray:
        if method == "spearman":
            a, b = ranks(a), ranks(b)
            c = None if c is None else ranks(c)
        if c is not None:
            a, b = resid(a, c), resid(b, c)
        a = a - a.mean(-1, keepdims=True)
        b = b - b.mean(-1, keepdims=True)
        den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1), np.nan)

    def means(m: np.ndarray, w_s: np.ndarray, w_q: np.ndarray) -> np.ndarray:
        ok = ~np.isnan(m)
        w = np.einsum("bs,bq->bsq", w_s, w_q)[:, None] * ok[None]      # (b, C, S, Q)
        tot = w.sum((-1, -2))
        return np.where(tot > 0, (w * np.nan_to_num(m)[None]).sum((-1, -2))
                        / np.where(tot > 0, tot, 1), np.nan)

    def stat(w_s: np.ndarray, w_q: np.ndarray) -> np.ndarray:
        return corr(means(x, w_s, w_q), means(y, w_s, w_q),
                    None if z is None else means(z, w_s, w_q))
    one_s, one_q = np.ones((1, S)) / S, np.ones((1, Q)) / Q
    point = float(stat(one_s, one_q)[0])
    per_seed = []
    for s in range(S):
        e = np.zeros((1, S))
        e[0, s] = 1.0
        per_seed.append(float(stat(e, one_q)[0]))
    draws = np.concatenate([stat(ws[i:i + 200], wq[i:i + 200]) for i in range(0, n_boot, 200)])
    dropped = float(np.isnan(draws).mean())
    draws = draws[~np.isnan(draws)]
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a]) if len(draws) else (np.nan, np.nan)
    what = ("partial " if z is not None else "") + f"{method} correlation across {C} conditions"
    what += (f", two-way percentile bootstrap over seeds × items ({n_boot} draws" if S > 1
             else f", bootstrap over items ({n_boot} draws")
    what += f"; {dropped:.1%} dropped)" if dropped else ")"
    return CrossedEstimate(point, float(lo), float(hi), S, Q, what, tuple(per_seed), level)


def auroc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(a positive scores above a negative), ties counted half (Mann–Whitney): how well a
    statistic separates two groups of runs, with no threshold chosen."""
    p, n = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    if p.size == 0 or n.size == 0:
        return float("nan")
    diff = p[:, None] - n[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def auroc_estimate(positives: Sequence[float], negatives: Sequence[float], n_boot: int = 2000,
                   level: float = 0.95, seed: int = 0, exact: bool = False,
                   ) -> dict[str, float | int | str]:
    """AUROC with a percentile bootstrap CI that resamples each group's runs (the independent
    units) separately. Under perfect separation every resample separates too, so the interval
    collapses to [1, 1]; ``exact`` adds the one-sided permutation p-value of the observed
    AUROC (all relabellings enumerated when there are at most 200,000, else 20,000 drawn),
    which says how often groups this small separate this well by chance (4 vs 8 runs:
    p = 1/495 at best)."""
    p, n = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    point = auroc(p, n)
    rng = np.random.default_rng(seed)
    draws = [auroc(p[rng.integers(0, p.size, p.size)], n[rng.integers(0, n.size, n.size)])
             for _ in range(n_boot)] if p.size and n.size else [float("nan")]
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a])
    out: dict[str, float | int | str] = {
        "mean": point, "lo": float(lo), "hi": float(hi), "n_positive": int(p.size),
        "n_negative": int(n.size), "level": level,
        "method": "Mann-Whitney AUROC, percentile bootstrap over runs within each group"}
    if exact and p.size and n.size:
        out["p_exact"] = _auroc_permutation_p(p, n, point, rng)
    return out


def _auroc_permutation_p(p: np.ndarray, n: np.ndarray, observed: float,
                         rng: np.random.Generator) -> float:
    import itertools
    import math

    pooled = np.concatenate([p, n])
    k, total = p.size, pooled.size
    if math.comb(total, k) <= 200_000:
        labels = itertools.combinations(range(total), k)
        splits = [np.array(c) for c in labels]
    else:
        splits = [rng.choice(total, k, replace=False) for _ in range(20_000)]
    hits = 0
    for idx in splits:
        mask = np.zeros(total, dtype=bool)
        mask[idx] = True
        hits += auroc(pooled[mask], pooled[~mask]) >= observed - 1e-12
    return hits / len(splits)


def wilson(successes: int, n: int, level: float = 0.95) -> dict[str, float | int | str]:
    """A rate over n independent runs with the Wilson score interval: unlike a bootstrap it
    stays honest at 0/n or n/n (0 false alarms in 8 runs is not a rate of exactly 0)."""
    from scipy.stats import norm

    if not 0 <= successes <= max(n, 0):
        raise ValueError(f"successes must be in 0..n, got {successes} of {n}")
    if n <= 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0,
                "successes": 0, "level": level, "method": "Wilson score interval"}
    z = float(norm.ppf(1 - (1 - level) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"mean": p, "lo": float(max(0.0, centre - half)), "hi": float(min(1.0, centre + half)),
            "n": int(n), "successes": int(successes), "level": level,
            "method": "Wilson score interval"}
