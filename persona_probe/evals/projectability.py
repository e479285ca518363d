"""Projectability: how far an intended persona carries to contexts it was not trained in.

Exactly as docs/DESIGN.md defines it. For intended persona c and context k, the margin is
m_k = p_k[c] − mean_{d≠c} p_k[d]; Δm_k is that margin minus the base model's;
projectability = mean_{held-out k} Δm_k / mean_{trained k} Δm_k; consistency =
1 − std_k Δm_k / (|mean_k Δm_k| + ε). Everything is computed from stored diagnostic records
(behavioural) or stored projections (representational), with CIs from resampling the same
statements (or prompts) in every context and in both models, so the comparison is paired.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from persona_probe.directions import Direction
from persona_probe.errors import PersonaProbeError
from persona_probe.evals.diagnostic import (
    Context, profile_draws, resample_indices, statement_sets)
from persona_probe.evals.records import ItemLog, write_summary
from persona_probe.models import Subject
from persona_probe.stats import Estimate

EPS = 1e-6


@dataclass(frozen=True)
class ProjectabilityResult:
    projectability: Estimate
    consistency: Estimate
    delta_margin: dict[str, Estimate]
    margin_model: dict[str, Estimate]
    margin_base: dict[str, Estimate]

    def to_dict(self) -> dict:
        return {"projectability": self.projectability.to_dict(),
                "consistency": self.consistency.to_dict(),
                "delta_margin": {k: v.to_dict() for k, v in self.delta_margin.items()},
                "margin_model": {k: v.to_dict() for k, v in self.margin_model.items()},
                "margin_base": {k: v.to_dict() for k, v in self.margin_base.items()}}


def _margins(profiles: dict[str, dict[str, np.ndarray]], persona: str,
             contexts: list[str]) -> np.ndarray:
    """(contexts, draws) margins m_k."""
    rows = []
    for k in contexts:
        p = profiles[k]
        others = [d for d in p if d != persona]
        rows.append(np.asarray(p[persona]) - np.mean([np.asarray(p[d]) for d in others], axis=0))
    return np.stack(rows)


def _stats(dm: np.ndarray, trained_idx: list[int], held_idx: list[int]
           ) -> tuple[np.ndarray, np.ndarray]:
    proj = dm[held_idx].mean(0) / dm[trained_idx].mean(0)
    cons = 1 - dm.std(0) / (np.abs(dm.mean(0)) + EPS)
    return proj, cons


def _est(point: float, draws: np.ndarray, n: int, level: float) -> Estimate:
    a = (1 - level) / 2
    d = draws[np.isfinite(draws)]
    lo, hi = (np.quantile(d, [a, 1 - a]) if d.size else (np.nan, np.nan))
    return Estimate(float(point), float(lo), float(hi), n, level)


def projectability(model_records: list[dict], base_records: list[dict], persona: str,
                   trained: list[str], held_out: list[str], seed: int = 0,
                   n_boot: int = 2000, level: float = 0.95) -> ProjectabilityResult:
    """Projectability and consistency of ``persona`` from item records of the finetuned and
    the base model (same statements/prompts, same contexts)."""
    if not trained or not held_out:
        raise PersonaProbeError("projectability needs at least one trained and one held-out "
                                "context")
    if set(trained) & set(held_out):
        raise PersonaProbeError(f"contexts {sorted(set(trained) & set(held_out))} are marked "
                                "both trained and held-out")
    ids = statement_sets(model_records)
    if ids != statement_sets(base_records):
        raise PersonaProbeError("model and base records cover different statements; measure "
                                "both on the same set")
    if persona not in ids:
        raise PersonaProbeError(f"persona {persona!r} is not among the measured dimensions "
                                f"{sorted(ids)}")
    if len(ids) < 2:
        raise PersonaProbeError("a margin needs at least two dimensions")
    contexts = [*trained, *held_out]
    draws = resample_indices(ids, n_boot, seed)
    results = {}
    for tag, recs in (("model", model_records), ("base", base_records)):
        have = {r["context"] for r in recs}
        missing = [c for c in contexts if c not in have]
        if missing:
            raise PersonaProbeError(f"{tag} records lack contexts {missing}; have {sorted(have)}")
        results[tag] = (_margins(profile_draws(recs, None, ids), persona, contexts),
                        _margins(profile_draws(recs, draws, ids), persona, contexts))
    (m_pt, m_bt), (b_pt, b_bt) = results["model"], results["base"]
    dm_pt, dm_bt = m_pt - b_pt, m_bt - b_bt
    ti, hi = list(range(len(trained))), list(range(len(trained), len(contexts)))
    proj_p, cons_p = _stats(dm_pt[:, None], ti, hi)
    proj_b, cons_b = _stats(dm_bt, ti, hi)
    n = sum(len(v) for g in ids.values() for v in g.values())
    return ProjectabilityResult(
        _est(proj_p[0], proj_b, n, level), _est(cons_p[0], cons_b, n, level),
        {k: _est(dm_pt[i], dm_bt[i], n, level) for i, k in enumerate(contexts)},
        {k: _est(m_pt[i], m_bt[i], n, level) for i, k in enumerate(contexts)},
        {k: _est(b_pt[i], b_bt[i], n, level) for i, k in enumerate(contexts)})


def projectability_from_dirs(model_dir: str | Path, base_dir: str | Path, persona: str,
                             trained: list[str], held_out: list[str], mode: str | None = None,
                             seed: int = 0, out: str | Path | None = None) -> dict:
    """Read two item logs (diagnostic or representational runs) and compute projectability."""
    def load(d: str | Path) -> list[dict]:
        recs = list(ItemLog(Path(d) / "items.jsonl").records.values())
        if mode is not None:
            recs = [r for r in recs if r.get("mode") == mode]
        if not recs:
            raise PersonaProbeError(f"{d}/items.jsonl has no records"
                                    + (f" in mode {mode!r}" if mode else ""))
        return recs
    res = projectability(load(model_dir), load(base_dir), persona, trained, held_out, seed)
    summary = {"persona": persona, "trained": trained, "held_out": held_out, "mode": mode,
               "model_dir": str(model_dir), "base_dir": str(base_dir), **res.to_dict()}
    write_summary(out, summary, seed, name="projectability.json")
    return summary


def representational_records(subject: Subject, directions: dict[str, Direction],
                             contexts: list[Context], questions: list[str], layer: int,
                             positions: str = "response", max_new_tokens: int = 32,
                             out: str | Path | None = None) -> list[dict]:
    """Projection of activations on each dimension's persona vector, per context and question
    (records in the diagnostic's format, ``group`` "pos", so ``projectability`` reads them).
    With ``positions="response"`` the subject's own greedy reply is generated first (docs/DESIGN.md:
    response-averaged projections respond at small scale)."""
    from persona_probe.capture import mean_activations
    from persona_probe.generation import generate_responses
    from persona_probe.prompts import PromptItem

    log = ItemLog(Path(out) / "items.jsonl" if out else None)
    hook = f"blocks.{layer}.hook_resid_post"
    for ctx in contexts:
        keys = [f"representational/{ctx.name}/q{i:03d}" for i in range(len(questions))]
        if all(f"{k}/{d}" in log for k in keys for d in directions):
            continue
        items = [PromptItem(k, ctx.messages(q)) for k, q in zip(keys, questions)]
        if positions == "response":
            items = generate_responses(subject, items, max_new_tokens, progress=False)
        acts = mean_activations(subject, items, [hook], positions)[:, 0]  # (items, d)
        recs = []
        for it, a in zip(items, acts):
            for dim, direction in directions.items():
                proj = float(a @ direction.at(layer).to(a.dtype))
                recs.append({"key": f"{it.id}/{dim}", "mode": "representational",
                             "context": ctx.name, "dimension": dim,
                             "statement": it.id.rsplit("/", 1)[1], "group": "pos",
                             "value": proj, "layer": layer, "positions": positions})
        log.append(recs)
    names = {c.name for c in contexts}
    return [r for r in log.records.values() if r["context"] in names]
