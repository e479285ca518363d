"""Dose-response: sweep steering strength (and ablation on/off) over targets and equal-norm
random controls, evaluate any metric, and keep every per-item number.

A metric is a callable ``metric(subject) -> sequence of per-item values`` (a trait score per
question, a judge score per answer, a refusal indicator per prompt). Each (target, condition)
is summarised as a mean with a bootstrap CI over items, and every item is written as one JSON
line, so figures are re-drawn without re-running the model. Random directions are unit vectors,
so at the same α they are steered with the same norm α·r̄_L as the target. With ``ablation``
the random controls are ablated too (the control for an ablation effect), the same way. The unsteered
condition (α = 0) is measured once and shared by every target: the model is the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from persona_probe.artifacts import atomic_write
from persona_probe.directions import random_direction
from persona_probe.interventions import (InterventionError, SAELatents, Target, ablate,
                                         reference_projection, steer)
from persona_probe.models import Subject
from persona_probe.stats import bootstrap

Metric = Callable[[Subject], Sequence[float]]


@dataclass
class DoseResponseConfig:
    # steering strengths α (units of the mean residual norm r̄_L; 0 is the unsteered model)
    alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4)
    layers: tuple[int, ...] | None = None        # None: each target's own (single) layer
    ablation: bool = False                       # also measure with each target ablated
    # layers a direction is ablated at (None: its steering layers; SAE latents are ablated
    # as latents, where they are read)
    ablation_layers: tuple[int, ...] | None = None
    ablation_mode: str = "directional"           # directional | mean (SAE latents: latent)
    random_controls: int = 2                     # random directions per target, run alike
    seed: int = 0                                # random control directions and bootstrap CIs


def _layers_of(target: Target, cfg_layers: tuple[int, ...] | None) -> list[int]:
    if cfg_layers is not None:
        return list(cfg_layers)
    if isinstance(target, SAELatents):
        return [target.hook.layer]
    return list(target.layers)


class SweepTarget(NamedTuple):
    """One edit a sweep applies: a named target or one of its equal-norm random controls."""
    kind: str                              # target | random
    target: Target
    steer_layers: list[int]
    ablation_layers: list[int] | None      # None: SAE latents, ablated as latents


def sweep_targets(subject: Subject, targets: dict[str, Target],
                  config: DoseResponseConfig) -> dict[str, SweepTarget]:
    """Every edit a sweep applies, by name: each target, then its ``random_controls`` random
    unit directions (``random{r}@{name}``, seeded by ``config.seed``), so a second sweep over
    the same config (e.g. sampled generations beside the teacher-forced measure) applies the
    very same random controls."""
    out: dict[str, SweepTarget] = {}
    for name, t in targets.items():
        steer_layers = _layers_of(t, config.layers)
        ab_layers = None if isinstance(t, SAELatents) else list(config.ablation_layers
                                                                or steer_layers)
        out[name] = SweepTarget("target", t, steer_layers, ab_layers)
        for r in range(config.random_controls):
            r_ab = ab_layers or steer_layers       # a random control is ablated directionally
            out[f"random{r}@{name}"] = SweepTarget("random", random_direction(
                subject.d_model, sorted(set(steer_layers) | set(r_ab)),
                seed=config.seed * 1000 + r, name=f"random{r}"), steer_layers, r_ab)
    return out


def dose_response(subject: Subject, targets: dict[str, Target], metric: Metric,
                  config: DoseResponseConfig = DoseResponseConfig(),
                  out: str | Path | None = None, metric_name: str = "metric",
                  reference: Subject | None = None) -> list[dict]:
    """Summary rows (target, kind, condition, α, mean, lo, hi, n); per-item rows go to
    ``out/items.jsonl`` and the summary to ``out/summary.jsonl`` when ``out`` is given.
    Finished conditions are read back from ``out`` (a killed sweep resumes).

    Directions are ablated directionally (projection → 0) or, with ``ablation_mode="mean"``, to
    ``reference``'s mean projection (``reference_projection``; default the subject itself).
    Either way the ablation moves the model's baseline too, so read an ablation effect on a
    finetuned model as a difference in differences against the base model ablated the same
    way (``ablation_gaps``)."""
    if config.ablation_mode not in ("mean", "directional"):
        raise InterventionError(f"ablation_mode {config.ablation_mode!r}: use 'mean' or "
                                "'directional'")
    all_targets = sweep_targets(subject, targets, config)
    done: dict[tuple[str, str, float], list[dict]] = {}
    items_path = Path(out) / "items.jsonl" if out else None
    if items_path is not None and items_path.is_file():
        for line in items_path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            done.setdefault((rec["target"], rec["condition"], rec["alpha"]), []).append(rec)
    item_rows = [r for rs in done.values() for r in rs]
    unsteered = next(([r["value"] for r in rs] for (_, c, a), rs in done.items()
                      if c == "steer" and a == 0.0), None)
    summary = []
    for name, (kind, target, layers, ab_layers) in all_targets.items():
        conditions = [("steer", a) for a in config.alphas]
        if config.ablation:
            conditions.append(("ablate", 0.0))
        for cond, alpha in conditions:
            key = (name, cond, float(alpha))
            if key not in done:
                if cond == "steer" and alpha == 0.0 and unsteered is not None:
                    ctx = None   # no intervention: the same numbers for every target
                elif cond == "ablate" and not ab_layers:
                    ctx = ablate(subject, target, "latent")
                elif cond == "ablate":
                    mu = (reference_projection(reference or subject, target, ab_layers)
                          if config.ablation_mode == "mean" else None)
                    ctx = ablate(subject, target, config.ablation_mode, ab_layers, mu)
                elif alpha == 0.0:
                    ctx = nullcontext()
                else:
                    ctx = steer(subject, target, alpha, layers)
                if ctx is None:
                    values = list(unsteered)
                else:
                    with ctx:
                        values = [float(v) for v in metric(subject)]
                    if cond == "steer" and alpha == 0.0:
                        unsteered = values
                recs = [{"target": name, "kind": kind, "condition": cond, "alpha": float(alpha),
                         "layers": ab_layers if cond == "ablate" else layers, "item": i,
                         "metric": metric_name, "value": v}
                        for i, v in enumerate(values)]
                done[key] = recs
                item_rows += recs
                if items_path is not None:
                    text = "".join(json.dumps(r) + "\n" for r in item_rows)
                    atomic_write(items_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
            est = bootstrap([r["value"] for r in done[key]], seed=config.seed)
            summary.append({"target": name, "kind": kind, "condition": cond,
                            "alpha": float(alpha), "metric": metric_name,
                            "layers": ab_layers if cond == "ablate" else layers,
                            **est.to_dict()})
    if out is not None:
        text = "".join(json.dumps(r) + "\n" for r in summary)
        atomic_write(Path(out) / "summary.jsonl", lambda tmp: tmp.write_text(text, "utf-8"))
    return summary


def load_summary(out: str | Path) -> list[dict]:
    path = Path(out) / "summary.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def is_monotonic(summary: list[dict], target: str, increasing: bool = True) -> bool:
    """Whether the steered means rise (or fall) with α for one target."""
    rows = sorted((r for r in summary if r["target"] == target and r["condition"] == "steer"),
                  key=lambda r: r["alpha"])
    means = np.array([r["mean"] for r in rows])
    d = np.diff(means)
    return bool((d > 0).all() if increasing else (d < 0).all())



def ablation_gaps(base_items: str | Path, finetuned_items: str | Path, seed: int = 0,
                  ) -> list[dict]:
    """How much of a finetuned model's shift each ablation removes, per item: the gap
    finetuned − base with nothing ablated, and with the same target ablated in both models
    (two ``dose_response`` runs with ``ablation=True``: on the base and on the finetuned
    model). Per target: the ablated gap (mean, CI), the paired reduction (gap − ablated gap,
    CI) and the fraction of the gap removed. Random controls say what ablating any direction
    of that norm and layer set does to the gap."""
    def read(path: str | Path) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, str]]:
        rows: dict[tuple[str, str], dict[int, float]] = {}
        kinds: dict[str, str] = {}
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if r["condition"] == "ablate" or r["alpha"] == 0.0:
                rows.setdefault((r["target"], r["condition"]), {})[r["item"]] = r["value"]
                kinds[r["target"]] = r["kind"]
        return {k: np.array([v[i] for i in sorted(v)]) for k, v in rows.items()}, kinds

    (b, _), (f, kinds) = read(base_items), read(finetuned_items)
    out = []
    for (target, cond) in f:
        if cond != "ablate" or (target, "ablate") not in b:
            continue
        gap = f[(target, "steer")] - b[(target, "steer")]
        gap_abl = f[(target, "ablate")] - b[(target, "ablate")]
        out.append({"target": target, "kind": kinds[target],
                    "gap": bootstrap(gap, seed=seed).to_dict(),
                    "gap_ablated": bootstrap(gap_abl, seed=seed).to_dict(),
                    "reduction": bootstrap(gap - gap_abl, seed=seed).to_dict(),
                    "fraction_removed": float(1 - gap_abl.mean() / gap.mean())})
    return out
