"""Early-warning monitor: persona statistics of the model *being trained*, read every N steps.

Each check runs one no-grad forward pass of a fixed probe set through the training model itself
(no copy), stopped after the deepest hook point needed, and computes per target the mean
projection on a persona direction (or the mean activation of an SAE latent) plus a firing rate.
Alarm rules compare the statistic with a baseline; actions log, stop training cleanly, or switch
on preventative steering. Everything is written as JSON lines (``events.jsonl``) with namespaced
keys (``persona/<target>/projection``), optionally mirrored to TensorBoard or W&B.

The monitor must never break the job it watches: the model's per-module train/eval flags,
its gradients and every RNG state are restored after a check, and any exception inside the
monitor becomes an ``error`` event while training goes on.

    monitor = EarlyWarningMonitor([MonitorTarget.from_direction(vec, 15)], probe,
                                  subject, every_n_steps=10, events="run/events.jsonl")
    trainer = Trainer(..., callbacks=[monitor.callback()])      # or monitor.step(model, step)
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import traceback
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from persona_probe.errors import PersonaProbeError
from persona_probe.models import Subject
from persona_probe.prompts import PromptItem


class MonitorError(PersonaProbeError):
    """A monitor that cannot be built as asked (raised at construction, never mid-training)."""


# --- targets ---------------------------------------------------------------------------------

@dataclass
class MonitorTarget:
    """What to watch at one hook point: a unit direction, or one latent of an SAE."""

    name: str
    hook: str
    direction: torch.Tensor | None = None       # (d_model,) unit vector
    sae: Any = None
    latent: int | None = None

    @classmethod
    def from_direction(cls, direction: Any, layer: int | None = None,
                       name: str | None = None) -> MonitorTarget:
        """A persona vector (``Direction``) at one of its layers (its only one by default)."""
        if layer is None:
            if len(direction.layers) != 1:
                raise MonitorError(f"direction {direction.name} spans layers "
                                   f"{direction.layers}; pass layer=")
            layer = direction.layers[0]
        if layer not in direction.layers:
            raise MonitorError(f"direction {direction.name} has no layer {layer}; it has "
                               f"{direction.layers}")
        return cls(name or f"{direction.name}@{layer}", direction.hook(layer),
                   direction=direction.at(layer).float().cpu())

    @classmethod
    def from_latent(cls, sae: Any, latent: int, name: str | None = None) -> MonitorTarget:
        if not 0 <= latent < sae.cfg.d_sae:
            raise MonitorError(f"latent {latent} is out of range 0..{sae.cfg.d_sae - 1}")
        return cls(name or f"latent{latent}", sae.cfg.metadata.hook_name, sae=sae, latent=latent)

    @property
    def kind(self) -> str:
        return "projection" if self.direction is not None else "activation"

    @torch.no_grad()
    def values(self, rows: torch.Tensor) -> torch.Tensor:
        """Per-token value: h·û, or the latent's activation."""
        if self.direction is not None:
            return rows.float() @ self.direction.to(rows.device)
        w = self.sae
        acts = w.encode(rows.to(w.W_enc.device, w.W_enc.dtype))
        return acts[:, self.latent].float()


# --- alarm rules -----------------------------------------------------------------------------

@dataclass
class TargetHistory:
    """Every check of one target: steps, the statistic, its standard error over probe items,
    and the per-item values (the same probe items at every check, so changes can be paired)."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    ses: list[float] = field(default_factory=list)
    items: list[np.ndarray] = field(default_factory=list)


class Rule(Protocol):
    name: str

    def evaluate(self, h: TargetHistory) -> tuple[bool, dict[str, float]]:
        """(alarm now?, diagnostics) from the history of one target's statistic."""


@dataclass
class ZScoreRule:
    """Alarm when z > ``z`` for ``consecutive`` checks after the baseline checks.

    ``mode="paired"`` (default): the probe items are the same at every check, so z is the
    paired statistic of the per-item change since the baseline, mean_i(x_it − x_i0) /
    SE_i(x_it − x_i0). On SmolLM2 a trait-distillation finetune moved the mean projection by
    only 0.15 between-item standard deviations, but the same way on nearly every item (paired
    z ≈ 15), which an unpaired rule cannot see. ``min_shift`` additionally requires the mean change to
    exceed an absolute size, for probe sets so consistent that negligible drift is significant.

    ``mode="checks"`` is docs/DESIGN.md's rule: z = (s_t − μ₀)/σ₀ with μ₀, σ₀ from ``baseline``
    (e.g. the base model) or the first ``baseline_checks`` checks (σ₀ never below the probe-item
    standard error, so one baseline check has a scale).
    """

    z: float = 3.0                  # alarm when z exceeds this...
    consecutive: int = 2            # ...on this many checks in a row
    baseline_checks: int = 1        # the first checks, the baseline (never alarm themselves)
    # paired (z of the per-item change since the baseline) | checks (z of the check's mean
    # against the baseline's mean and spread)
    mode: str = "paired"
    min_shift: float = 0.0          # paired: the mean change must also exceed this (units of
                                    # the statistic)
    baseline: tuple[float, float] | None = None  # checks: a given (μ₀, σ₀) instead of the first
                                                 # checks; then every check may alarm
    name: str = "zscore"            # the rule's name in the monitor's alarm records

    def __post_init__(self) -> None:
        if self.mode not in ("paired", "checks"):
            raise MonitorError(f"ZScoreRule mode {self.mode!r}: use 'paired' or 'checks'")
        if self.baseline is not None and self.mode == "paired":
            raise MonitorError("a (mu, sigma) baseline is for mode='checks'; the paired mode "
                               "takes its baseline from the first checks")

    def _z(self, h: TargetHistory, t: int) -> tuple[float, dict[str, float]]:
        b = self.baseline_checks
        if self.mode == "paired":
            ref = np.mean(h.items[:b], axis=0)
            d = h.items[t] - ref
            se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
            shift = float(d.mean())
            z = shift / se if se > 0 else (math.inf if shift > 0 else 0.0)
            if shift <= self.min_shift:
                z = min(z, 0.0)
            return z, {"shift": shift, "shift_se": se,
                       "threshold": float(ref.mean()) + max(self.z * se, self.min_shift)}
        if self.baseline is not None:
            mu, sigma = self.baseline
        else:
            base = np.asarray(h.values[:b])
            spread = float(base.std(ddof=1)) if base.size > 1 else 0.0
            mu, sigma = float(base.mean()), max(spread, float(np.mean(h.ses[:b])))
        sigma = max(sigma, 1e-12)
        return (h.values[t] - mu) / sigma, {"mu0": mu, "sigma0": sigma,
                                            "threshold": mu + self.z * sigma}

    def evaluate(self, h: TargetHistory) -> tuple[bool, dict[str, float]]:
        start = 0 if self.baseline is not None else self.baseline_checks
        if len(h.values) <= start:
            return False, {}
        zs = [self._z(h, t)[0] for t in range(max(start, len(h.values) - self.consecutive),
                                              len(h.values))]
        z, info = self._z(h, len(h.values) - 1)
        fired = len(h.values) - start >= self.consecutive and all(x > self.z for x in zs)
        return fired, {"z": z, **info}


def family_rule(rule: ZScoreRule, n_targets: int, n_items: int | None = None) -> ZScoreRule:
    """``rule`` for a monitor that watches ``n_targets`` statistics at once (a drift profile):
    Bonferroni over the targets, so the chance that *any* target's statistic exceeds the new
    threshold at one check, when no target's per-item changes have a positive mean, is at most
    the chance a single target has of exceeding ``rule.z`` (for normal per-item changes; any
    correlation between targets only makes it smaller). It bounds one exceedance at one check,
    not a whole run's alarms (several checks, each a chance), and it is one-sided: a target
    that moved down never alarms. With ``n_items`` (the probe set's size) the paired statistic is read
    as Student's t with ``n_items − 1`` degrees of freedom (what it is for normal per-item
    changes; with 16 items z = 3 is a one-sided 0.45% level, not the normal 0.135%), else as
    normal: z = 3 becomes 4.39 for 17 targets of 16 items (3.78 if normal). The
    consecutive-checks rule is kept as it is. Bonferroni, not a step-down procedure, so one
    target's threshold does not depend on the others' values (each alarm stays reproducible on
    its own)."""
    from scipy.stats import norm, t

    if not isinstance(rule, ZScoreRule):
        raise MonitorError(f"family_rule adjusts a ZScoreRule, got {type(rule).__name__}")
    if n_targets < 1:
        raise MonitorError(f"n_targets must be >= 1, got {n_targets}")
    if n_items is not None and n_items < 2:
        raise MonitorError(f"n_items must be >= 2 (a paired z needs a spread), got {n_items}")
    if n_items is not None and rule.mode != "paired":
        raise MonitorError("n_items reads the paired statistic as Student's t; a "
                           f"mode={rule.mode!r} z is not one: leave n_items out")
    if "-bonferroni" in rule.name:
        raise MonitorError(f"rule {rule.name!r} is already corrected for a family; pass the "
                           "single-target rule")
    if n_targets == 1:
        return rule
    dist = norm() if n_items is None else t(n_items - 1)
    z = float(dist.isf(dist.sf(rule.z) / n_targets))
    return dataclasses.replace(rule, z=z, name=f"{rule.name}-bonferroni{n_targets}")


@dataclass
class ThresholdRule:
    """Alarm when the statistic exceeds ``value`` for ``consecutive`` checks."""

    value: float                    # alarm when the statistic is above this (required)...
    consecutive: int = 1            # ...on this many checks in a row
    name: str = "threshold"         # the rule's name in the monitor's alarm records

    def evaluate(self, h: TargetHistory) -> tuple[bool, dict[str, float]]:
        v = h.values
        fired = len(v) >= self.consecutive and all(x > self.value
                                                   for x in v[-self.consecutive:])
        return fired, {"threshold": self.value}


@dataclass
class TrendRule:
    """Alarm when the least-squares slope over the last ``window`` checks exceeds
    ``min_slope`` (statistic units per 1000 steps)."""

    min_slope: float                # alarm above this slope (units per 1000 steps; required)
    window: int = 4                 # the last this many checks the line is fitted to
    name: str = "trend"             # the rule's name in the monitor's alarm records

    def evaluate(self, h: TargetHistory) -> tuple[bool, dict[str, float]]:
        if len(h.values) < self.window:
            return False, {}
        x = np.asarray(h.steps[-self.window:], dtype=float) / 1000.0
        y = np.asarray(h.values[-self.window:], dtype=float)
        if np.ptp(x) == 0:
            return False, {}
        slope = float(np.polyfit(x, y, 1)[0])
        return slope > self.min_slope, {"slope_per_1k_steps": slope}


# --- actions ---------------------------------------------------------------------------------

@dataclass
class SteerAction:
    """On alarm, add α·r̄_L·û in every later training forward pass (preventative steering),
    until training ends. ``direction`` is a ``Direction``."""

    direction: Any                  # the Direction steered along (required)
    alpha: float                    # strength α, in units of the mean residual norm r̄_L
    layers: list[int] | None = None  # layers steered (None: the direction's own)
    name: str = "steer"             # a label for the action (the records say "steer")


ACTIONS = ("log", "stop")


# --- the monitor -----------------------------------------------------------------------------

def probe_set_from_answers(subject: Subject, questions: Sequence[str], max_new_tokens: int = 32,
                           seed: int = 0) -> list[PromptItem]:
    """A fixed probe set: the subject's own greedy answers to ``questions`` (read at the
    response tokens, so every check sees the same text)."""
    from persona_probe.generation import generate_responses
    from persona_probe.traits import question_items

    return generate_responses(subject, question_items(list(questions), "probe"), max_new_tokens,
                              temperature=0.0, seed=seed, progress=False)


@contextmanager
def preserved_state(model: torch.nn.Module):
    """Eval mode and no grad inside; afterwards every module's ``training`` flag and every RNG
    state (CPU, CUDA, numpy, random) are exactly as before."""
    import random

    flags = [(m, m.training) for m in model.modules()]
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            yield
    finally:
        for m, f in flags:
            m.training = f
        np.random.set_state(np_state)
        random.setstate(py_state)


@dataclass
class EarlyWarningMonitor:
    """See the module docstring. ``subject`` supplies the tokenizer and chat template (the base
    model's Subject); the model checked is whatever ``step`` / the callback is handed."""

    targets: list[MonitorTarget]
    probe_set: list[PromptItem]
    subject: Subject
    every_n_steps: int = 50
    rule: Any = field(default_factory=ZScoreRule)
    actions: list[Any] = field(default_factory=lambda: ["log"])
    events: str | Path | None = None
    positions: str = "response"
    batch_size: int = 16
    mirror: str | None = None            # "tensorboard:LOGDIR" | "wandb"
    write_events: bool = True            # False on non-zero ranks of a distributed job
    # targets whose alarm triggers the actions (None: any target's); the others only alarm,
    # so a drift profile can watch many statistics while one of them decides to stop or steer
    act_on: list[str] | None = None

    def __post_init__(self) -> None:
        if not self.targets:
            raise MonitorError("no targets: pass MonitorTarget.from_direction(...) or "
                               ".from_latent(...)")
        if not self.probe_set:
            raise MonitorError("the probe set is empty")
        if self.every_n_steps < 1:
            raise MonitorError("every_n_steps must be >= 1")
        names = [t.name for t in self.targets]
        if len(set(names)) < len(names):
            raise MonitorError(f"target names must be unique, got {names}")
        for a in self.actions:
            if not (a in ACTIONS or isinstance(a, SteerAction)):
                raise MonitorError(f"action {a!r}: use 'log', 'stop' or a SteerAction")
        if self.act_on is not None:
            unknown = sorted(set(self.act_on) - set(names))
            if unknown or not self.act_on:
                raise MonitorError(f"act_on {self.act_on}: name at least one target, from "
                                   f"{names}")
            self.act_on = list(self.act_on)
        self.events = Path(self.events) if self.events is not None else None
        self.history: dict[str, TargetHistory] = {t.name: TargetHistory() for t in self.targets}
        self.alarmed: dict[str, int] = {}     # target -> step of its first alarm
        self.should_stop = False
        self._fire_ref: dict[str, float] = {}
        self._steering = ExitStack()
        self._mirror_obj: Any = None
        self.check_seconds = 0.0

    # -- events --
    def _emit(self, record: dict) -> None:
        record = {"time": time.time(), **record}
        if self.events is not None and self.write_events:
            self.events.parent.mkdir(parents=True, exist_ok=True)
            with open(self.events, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()
        if self.mirror and record["event"] == "check":
            self._mirror(record)

    def _mirror(self, record: dict) -> None:
        try:
            kind, _, arg = self.mirror.partition(":")
            scalars = {k: v for k, v in record.items() if k.startswith("persona/")
                       and isinstance(v, (int, float)) and math.isfinite(v)}
            if kind == "tensorboard":
                if self._mirror_obj is None:
                    from torch.utils.tensorboard import SummaryWriter

                    self._mirror_obj = SummaryWriter(arg or "runs/monitor-tb")
                for k, v in scalars.items():
                    self._mirror_obj.add_scalar(k, v, record["step"])
            elif kind == "wandb":
                import wandb

                if wandb.run is not None:
                    wandb.log(scalars, step=record["step"])
            else:
                raise MonitorError(f"mirror {self.mirror!r}: use tensorboard:LOGDIR or wandb")
        except Exception as exc:  # noqa: BLE001 - a mirror must not break training
            self.mirror = None
            self._emit({"event": "error", "step": record["step"], "where": "mirror",
                        "error": f"{type(exc).__name__}: {exc}"})

    # -- checks --
    def _measure(self, model: torch.nn.Module) -> dict[str, dict[str, float]]:
        from persona_probe.capture import collect_rows
        from persona_probe.training.callbacks import training_subject

        view = training_subject(self.subject, model)
        hooks = sorted({t.hook for t in self.targets})
        acts, index = collect_rows(view, self.probe_set, hooks, self.positions,
                                   self.batch_size)
        item = index["item"]
        out = {}
        for t in self.targets:
            v = t.values(acts[_canonical(t.hook)]).cpu()
            per_item = torch.zeros(len(self.probe_set)).index_add_(0, item, v)
            counts = torch.bincount(item, minlength=len(self.probe_set)).clamp_min(1)
            per_item = (per_item / counts).numpy()
            if t.direction is not None:
                if t.name not in self._fire_ref:     # fixed at the first check
                    self._fire_ref[t.name] = float(np.quantile(v.numpy(), 0.95))
                ref = self._fire_ref[t.name]
                fire = float((v > ref).float().mean())
            else:
                fire = float((v > 0).float().mean())
            se = float(per_item.std(ddof=1) / math.sqrt(len(per_item))) if len(per_item) > 1 \
                else 0.0
            out[t.name] = {"value": float(per_item.mean()), "se": se, "firing_rate": fire,
                           "items": per_item}
        return out

    def step(self, model: torch.nn.Module, step: int, force: bool = False) -> list[dict]:
        """Check if ``step`` is on the cadence (or ``force``); returns the events emitted.
        Never raises: failures become ``error`` events."""
        if not force and step % self.every_n_steps:
            return []
        emitted: list[dict] = []
        emit = self._emit

        def record(ev: dict) -> None:
            emitted.append(ev)
            emit(ev)
        try:
            t0 = time.perf_counter()
            with preserved_state(model):
                stats = self._measure(model)
            dt = time.perf_counter() - t0
            self.check_seconds += dt
            check = {"event": "check", "step": step, "check_seconds": dt}
            alarms = []
            for t in self.targets:
                s, h = stats[t.name], self.history[t.name]
                h.steps.append(step)
                h.values.append(s["value"])
                h.ses.append(s["se"])
                h.items.append(s["items"])
                fired, info = self.rule.evaluate(h)
                check.update({f"persona/{t.name}/{t.kind}": s["value"],
                              f"persona/{t.name}/{t.kind}_se": s["se"],
                              f"persona/{t.name}/firing_rate": s["firing_rate"],
                              **{f"persona/{t.name}/{k}": v for k, v in info.items()}})
                if len(s["items"]) <= 64:   # per-item values: paired analyses from the events
                    check[f"persona/{t.name}/items"] = [round(float(x), 5) for x in s["items"]]
                if fired and t.name not in self.alarmed:
                    self.alarmed[t.name] = step
                    alarms.append({"event": "alarm", "step": step, "target": t.name,
                                   "rule": self.rule.name, **info,
                                   f"persona/{t.name}/{t.kind}": s["value"]})
            record(check)
            for a in alarms:
                record(a)
            if any(self.act_on is None or a["target"] in self.act_on for a in alarms):
                for ev in self._act(model, step):
                    record(ev)
        except Exception as exc:  # noqa: BLE001 - the monitor must never break training
            record({"event": "error", "step": step, "where": "check",
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(limit=4)})
        return emitted

    def _act(self, model: torch.nn.Module, step: int) -> list[dict]:
        out = []
        for a in self.actions:
            if a == "log":
                continue
            if a == "stop":
                self.should_stop = True
                out.append({"event": "action", "step": step, "action": "stop"})
            elif isinstance(a, SteerAction) and not self._steering._exit_callbacks:
                from persona_probe.interventions import steer
                from persona_probe.training.callbacks import training_subject

                view = training_subject(self.subject, model)
                with preserved_state(model):      # reference norms: a no-grad forward pass
                    cm = steer(view, a.direction, a.alpha, a.layers)
                    self._steering.enter_context(cm)
                out.append({"event": "action", "step": step, "action": "steer",
                            "alpha": a.alpha, "direction": a.direction.name})
        return out

    def close(self, step: int | None = None) -> None:
        """Remove any steering the monitor switched on; flush the mirror."""
        self._steering.close()
        if self._mirror_obj is not None:
            try:
                self._mirror_obj.flush()
            except Exception:  # noqa: BLE001
                pass
        self._emit({"event": "end", "step": step, "check_seconds_total": self.check_seconds,
                    "alarms": self.alarmed})

    def callback(self):
        """A transformers ``TrainerCallback`` (works with TRL trainers): a check at step 0 and
        every ``every_n_steps``; the ``stop`` action saves a checkpoint and ends training."""
        from transformers import TrainerCallback

        monitor = self

        class EarlyWarningCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kw):
                monitor.write_events = state.is_world_process_zero
                if state.global_step == 0:
                    monitor.step(model, 0, force=True)

            def on_step_end(self, args, state, control, model=None, **kw):
                monitor.step(model, state.global_step)
                if monitor.should_stop:
                    control.should_save = True
                    control.should_training_stop = True

            def on_train_end(self, args, state, control, **kw):
                monitor.close(state.global_step)

        return EarlyWarningCallback()


def _canonical(hook: str) -> str:
    from persona_probe.hooks import parse_hook

    return parse_hook(hook).name


# --- reading events back -----------------------------------------------------------------------

def read_events(path: str | Path) -> list[dict]:
    """Every complete event line (a torn last line from a killed job is skipped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def first_alarm(events: Sequence[dict], target: str | None = None) -> int | None:
    steps = [e["step"] for e in events if e.get("event") == "alarm"
             and (target is None or e.get("target") == target)]
    return min(steps) if steps else None


def lead_time(alarm_step: int | None, behaviour: Sequence[tuple[int, float]],
              threshold: float) -> dict[str, Any]:
    """Lead time = first step the behavioural rate exceeds ``threshold`` minus the alarm step
    (positive: warned in advance). ``None`` parts when either never happened."""
    crossing = next((s for s, r in sorted(behaviour) if r > threshold), None)
    lead = None if alarm_step is None or crossing is None else crossing - alarm_step
    return {"alarm_step": alarm_step, "behaviour_crossing_step": crossing,
            "threshold": threshold, "lead_time": lead}


Z_CAP = 1e6        # a paired z with zero spread and a positive shift (inf) is stored as this


def rule_series(rule: Any, items: Sequence[Any], steps: Sequence[int]) -> dict[str, Any]:
    """Run ``rule`` over per-item values check by check, as the monitor does online: z per
    check, the first step it fires, and the checks (after the baseline) at which its condition
    held. The offline twin of the monitor, for analyses from saved events (and for behavioural
    curves judged by the same rule)."""
    h = TargetHistory()
    zs: list[float | None] = []
    fired_at, firing = None, []
    for step, v in zip(steps, items):
        v = np.asarray(v, dtype=np.float64)
        h.steps.append(step)
        h.values.append(float(v.mean()))
        h.ses.append(float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0)
        h.items.append(v)
        fired, info = rule.evaluate(h)
        zs.append(info.get("z"))
        if len(h.values) > rule.baseline_checks:
            firing.append(bool(fired))
        if fired and fired_at is None:
            fired_at = step
    # a check can fire only once `consecutive` checks follow the baseline
    eligible = max(0, len(firing) - (rule.consecutive - 1))
    valued = [min(float(z), Z_CAP) for z in zs if z is not None and not np.isnan(z)]
    return {"steps": list(steps), "z": [None if z is None else min(float(z), Z_CAP)
                                        for z in zs], "first_step": fired_at,
            "max_z": max(valued) if valued else float("nan"),
            "checks_firing": int(sum(firing)), "eligible_checks": eligible,
            "onset": fired_at is not None}


def drift_profile(events: Sequence[dict], rule: ZScoreRule,
                  targets: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Which targets moved up, from one monitor's event stream: per target, the first alarm
    step of the family-wise rule over *every* target the checks carry per-item values for
    (``family_rule(rule, n, n_items)``; ``targets`` only selects the rows returned, never the
    family), its largest z, and the mean change since the first check; sorted by largest z.
    ``rule`` is the single-target rule (a corrected one is refused). An alarm says the target
    rose at the family-wise level; no alarm is not evidence that it stayed put (that needs an
    equivalence bound), and a target that fell never alarms (its ``change`` says so)."""
    checks = [e for e in events if e.get("event") == "check"]
    if not checks:
        raise MonitorError("no check events: was the monitor run (events.jsonl empty)?")
    found = sorted({k.split("/")[1] for k in checks[0] if k.startswith("persona/")
                    and k.endswith("/items")})
    names = list(targets) if targets is not None else found
    missing = [n for n in names if f"persona/{n}/items" not in checks[0]]
    if missing or not names:
        raise MonitorError(f"targets {missing or names} have no per-item values in the events "
                           f"(the monitor records them for probe sets of <= 64 items); "
                           f"found {found}")
    n_items = len(checks[0][f"persona/{names[0]}/items"])
    if n_items < 2:
        raise MonitorError("one probe item per check: a paired z needs at least two")
    fam = family_rule(rule, len(found), n_items)
    steps = [e["step"] for e in checks]
    out = []
    for n in names:
        items = [np.asarray(e[f"persona/{n}/items"], dtype=np.float64) for e in checks]
        series = rule_series(fam, items, steps)
        # a paired z over n items whose change is non-zero on only m of them is at most
        # sqrt(m(n-1)/(n-m)) (equal changes): a sparse SAE latent may be unable to alarm
        moved = max(int(np.count_nonzero(x != items[0])) for x in items)
        reach = (math.inf if moved >= n_items else
                 math.sqrt(moved * (n_items - 1) / (n_items - moved)))
        out.append({"target": n, "alarm_step": series["first_step"],
                    "items_changed": moved, "max_reachable_z": reach,
                    "can_alarm": reach > fam.z,
                    "max_z": series["max_z"], "z": series["z"], "steps": steps,
                    "change": float(items[-1].mean() - items[0].mean()),
                    "change_sd_units": float((items[-1] - items[0]).mean()
                                             / max(items[0].std(ddof=1), 1e-12))
                    if items[0].size > 1 else float("nan")})
    out.sort(key=lambda r: -r["max_z"] if np.isfinite(r["max_z"]) else math.inf)
    return [{**r, "family_z": fam.z, "family_size": len(found)} for r in out]
