"""Dose-response: sweep steering strength (and ablation on/off) over targets and equal-norm
random controls, evaluate any metric, and keep every per-item number.

A metric is a callable ``metric(subject) -> sequence of per-item values`` (a trait score per
question, a judge score per answer, a refusal indicator per prompt). Each (target, condition)
is summarised as a mean with a bootstrap CI over items, and every item is written as one JSON
line, so figures are re-drawn without re-running the model. Random directions are unit vectors,
so at the same α they are steered with the same norm α·r̄_L as the target.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from persona_probe.artifacts import atomic_write
from persona_probe.directions import random_direction
from persona_probe.interventions import SAELatents, Target, ablate, steer
from persona_probe.models import Subject
from persona_probe.stats import bootstrap

Metric = Callable[[Subject], Sequence[float]]


@dataclass
class DoseResponseConfig:
    alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4)
    layers: tuple[int, ...] | None = None        # None: each target's own (single) layer
    ablation: bool = False                       # also measure with the target ablated
    ablation_layers: tuple[int, ...] | None = None
    random_controls: int = 2
    seed: int = 0


def _layers_of(target: Target, cfg_layers: tuple[int, ...] | None) -> list[int]:
    if cfg_layers is not None:
        return list(cfg_layers)
    if isinstance(target, SAELatents):
        return [target.hook.layer]
    return list(target.layers)


def dose_response(subject: Subject, targets: dict[str, Target], metric: Metric,
                  config: DoseResponseConfig = DoseResponseConfig(),
                  out: str | Path | None = None, metric_name: str = "metric",
                  ) -> list[dict]:
    """Summary rows (target, kind, condition, α, mean, lo, hi, n); per-item rows go to
    ``out/items.jsonl`` and the summary to ``out/summary.jsonl`` when ``out`` is given.
    Finished conditions are read back from ``out`` (a killed sweep resumes)."""
    all_targets: dict[str, tuple[str, Target]] = {k: ("target", t) for k, t in targets.items()}
    for name, t in list(targets.items()):
        for r in range(config.random_controls):
            layers = _layers_of(t, config.layers)
            all_targets[f"random{r}@{name}"] = ("random", random_direction(
                subject.d_model, layers, seed=config.seed * 1000 + r, name=f"random{r}"))
    done: dict[tuple[str, str, float], list[dict]] = {}
    items_path = Path(out) / "items.jsonl" if out else None
    if items_path is not None and items_path.is_file():
        for line in items_path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            done.setdefault((rec["target"], rec["condition"], rec["alpha"]), []).append(rec)
    item_rows = [r for rs in done.values() for r in rs]
    summary = []
    for name, (kind, target) in all_targets.items():
        layers = _layers_of(target, config.layers)
        conditions = [("steer", a) for a in config.alphas]
        if config.ablation and kind == "target":
            conditions.append(("ablate", 0.0))
        for cond, alpha in conditions:
            key = (name, cond, float(alpha))
            if key not in done:
                if cond == "ablate":
                    mode = "latent" if isinstance(target, SAELatents) else "directional"
                    ab_layers = (list(config.ablation_layers) if config.ablation_layers
                                 else layers) if mode == "directional" else None
                    ctx = ablate(subject, target, mode, ab_layers)
                elif alpha == 0.0:
                    ctx = nullcontext()
                else:
                    ctx = steer(subject, target, alpha, layers)
                with ctx:
                    values = [float(v) for v in metric(subject)]
                recs = [{"target": name, "kind": kind, "condition": cond, "alpha": float(alpha),
                         "layers": layers, "item": i, "metric": metric_name, "value": v}
                        for i, v in enumerate(values)]
                done[key] = recs
                item_rows += recs
                if items_path is not None:
                    text = "".join(json.dumps(r) + "\n" for r in item_rows)
                    atomic_write(items_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
            est = bootstrap([r["value"] for r in done[key]], seed=config.seed)
            summary.append({"target": name, "kind": kind, "condition": cond,
                            "alpha": float(alpha), "layers": layers, "metric": metric_name,
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

