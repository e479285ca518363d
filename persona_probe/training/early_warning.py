"""Lead time of the early-warning monitor: one finetune with the monitor and a periodic
behavioural eval, read back as (alarm step, behavioural crossing step, lead time).

Lead time = first step at which the behavioural rate exceeds its threshold minus the alarm
step (docs/DESIGN.md): positive means the activations warned before the behaviour showed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from persona_probe.artifacts import write_json
from persona_probe.models import Subject
from persona_probe.monitor import EarlyWarningMonitor, first_alarm, lead_time, read_events
from persona_probe.traits import Trait


def trait_preference(trait: Trait, questions: Sequence[str]) -> Callable[[Subject], np.ndarray]:
    """A judge-free behavioural rate for small models: per held-out question, the share of
    (trait reply, anti reply) pairs of the trait definition in which the model finds the trait
    reply more likely (per token) than the anti reply. Teacher-forced, so no sampling noise;
    its mean is the fraction of choices that go the trait's way. One value per question, so a
    bootstrap over the returned values resamples questions, the independent unit (the pairs
    within a question are not independent draws)."""
    from persona_probe.likelihood import reply_loglik

    def rate(subject: Subject) -> np.ndarray:
        prompts = [[{"role": "user", "content": q}] for q in questions]
        ll = reply_loglik(subject, prompts, [*trait.trait_replies, *trait.anti_replies])
        n = len(trait.trait_replies)
        wins = ll[:, :n][:, :, None] > ll[:, n:][:, None, :]      # (questions, trait, anti)
        return wins.mean((1, 2)).astype(float)
    return rate


def monitored_finetune(cfg, out: str | Path, base: Subject, monitor: EarlyWarningMonitor,
                       behaviour: Callable[[Subject], Sequence[float]], behaviour_every: int,
                       threshold: float, behaviour_name: str = "behaviour") -> dict:
    """Finetune ``cfg`` (a ``FinetuneConfig``) into ``out`` with ``monitor`` and a behavioural
    curve every ``behaviour_every`` steps; writes ``out/lead_time.json`` and returns it.
    ``base`` is consumed (LoRA layers are injected into it): pass a freshly loaded subject."""
    from persona_probe.training.callbacks import periodic_metric
    from persona_probe.training.finetune import finetune

    out = Path(out)
    curve_path = out.parent / f"{out.name}-behaviour.jsonl"
    curve_path.unlink(missing_ok=True)
    if monitor.events is not None:
        Path(monitor.events).unlink(missing_ok=True)
    finetune(cfg, out, subject=base, overwrite=True, callbacks=[
        monitor.callback(),
        periodic_metric(base, behaviour, behaviour_every, curve_path, behaviour_name)])
    curve = [json.loads(line) for line in curve_path.read_text().splitlines()]
    events = read_events(monitor.events) if monitor.events is not None else []
    result = {**lead_time(first_alarm(events), [(p["step"], p["mean"]) for p in curve],
                          threshold),
              "behaviour": [{k: p[k] for k in ("step", "mean", "lo", "hi")} for p in curve],
              "behaviour_name": behaviour_name, "events": str(monitor.events),
              "monitor_seconds": monitor.check_seconds}
    write_json(out / "lead_time.json", result)
    return result
