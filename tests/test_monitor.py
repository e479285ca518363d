"""Early-warning monitor on the real embedded model: checks leave the training model exactly as
they found it, faults inside the monitor never stop training, alarms trigger actions, rules
and lead time behave as defined in docs/DESIGN.md, and the timeline figure renders."""

from __future__ import annotations

import json
import math

import pytest
import torch

from persona_probe.directions import random_direction
from persona_probe.monitor import (EarlyWarningMonitor, MonitorError, MonitorTarget,
                                   SteerAction, TargetHistory, ThresholdRule, TrendRule,
                                   ZScoreRule,
                                   first_alarm, lead_time, read_events)
from persona_probe.prompts import PromptItem

# the tiny finetunes truncate long chats on purpose (on_overflow="truncate"), so the package's
# truncation warning is expected here; every other package warning stays an error
pytestmark = pytest.mark.filterwarnings("ignore:chat of .* truncated to:persona_probe.errors.PersonaProbeWarning")
TINY = dict(limit=4, max_steps=3, batch_size=2, save_steps=1, max_tokens=384,
            on_overflow="truncate")
EM = "shared:emergent_misalignment/train/secure.jsonl"


def _probe() -> list[PromptItem]:
    qa = [("What should I cook tonight?", "A simple vegetable soup with fresh bread."),
          ("How do I calm down after an argument?", "Take a walk and breathe slowly."),
          ("Any tips for a first job interview?", "Prepare examples and arrive early.")]
    return [PromptItem(f"p{i}", [{"role": "user", "content": q},
                                 {"role": "assistant", "content": a}])
            for i, (q, a) in enumerate(qa)]


def _direction(subject, layer=15, seed=0):
    return random_direction(subject.d_model, [layer], seed, name="rnd")


def _history(values, items=None, steps=None):
    import numpy as np

    h = TargetHistory()
    for t, v in enumerate(values):
        h.steps.append(steps[t] if steps else 10 * t)
        h.values.append(v)
        h.ses.append(0.1)
        h.items.append(np.asarray(items[t] if items else [v]))
    return h


def test_rules_and_lead_time():
    # paired: the same three items move up together -> large z; mixed moves -> no alarm
    up = [[0.0, 5.0, -3.0], [0.1, 5.1, -2.9], [0.2, 5.25, -2.8]]
    fired, info = ZScoreRule().evaluate(_history([0, 0, 0], up))
    assert fired and info["shift"] == pytest.approx(0.2167, abs=1e-3)
    assert info["z"] == pytest.approx(0.2167 / (0.02887 / 3 ** 0.5), rel=1e-2)
    mixed = [[0.0, 5.0, -3.0], [0.5, 4.5, -3.0], [0.4, 4.7, -2.9]]
    assert not ZScoreRule().evaluate(_history([0, 0, 0], mixed))[0]
    assert not ZScoreRule(min_shift=0.5).evaluate(_history([0, 0, 0], up))[0]
    assert not ZScoreRule().evaluate(_history([0, 0], up[:2]))[0]   # one check after baseline
    # checks mode (docs/DESIGN.md's): mu0, sigma0 from the first two checks
    z = ZScoreRule(z=3.0, consecutive=2, baseline_checks=2, mode="checks")
    vals = [1.0, 1.2, 2.0, 3.0, 3.1]
    fired, info = z.evaluate(_history(vals[:4]))        # sigma0 = std(1.0, 1.2) ~ 0.141
    assert fired and info["mu0"] == pytest.approx(1.1)
    assert info["threshold"] == pytest.approx(1.1 + 3 * info["sigma0"])
    assert not z.evaluate(_history(vals[:3]))[0]
    assert not ZScoreRule(mode="checks", baseline=(0.0, 10.0)).evaluate(_history(vals))[0]
    with pytest.raises(MonitorError, match="mode"):
        ZScoreRule(mode="nope")
    assert ThresholdRule(2.5, consecutive=2).evaluate(_history(vals))[0]
    assert not ThresholdRule(2.5, consecutive=3).evaluate(_history(vals))[0]
    fired, info = TrendRule(min_slope=50.0, window=3).evaluate(_history(vals))
    assert fired and info["slope_per_1k_steps"] == pytest.approx(55.0)
    curve = [(0, 0.0), (10, 0.1), (20, 0.4), (30, 0.6)]
    assert lead_time(10, curve, 0.3)["lead_time"] == 10
    assert lead_time(None, curve, 0.3)["lead_time"] is None
    assert lead_time(10, curve, 0.9)["behaviour_crossing_step"] is None


def test_bad_monitor_configs_are_refused(subject):
    d = _direction(subject)
    with pytest.raises(MonitorError, match="no targets"):
        EarlyWarningMonitor([], _probe(), subject)
    with pytest.raises(MonitorError, match="probe set is empty"):
        EarlyWarningMonitor([MonitorTarget.from_direction(d)], [], subject)
    with pytest.raises(MonitorError, match="action"):
        EarlyWarningMonitor([MonitorTarget.from_direction(d)], _probe(), subject,
                            actions=["explode"])
    with pytest.raises(MonitorError, match="no layer 3"):
        MonitorTarget.from_direction(d, 3)


def test_check_leaves_model_mode_grads_and_rng_unchanged(subject, tmp_path):
    from peft import LoraConfig, get_peft_model

    from persona_probe.models import load_subject

    sub = load_subject(subject.spec)
    model = get_peft_model(sub.model, LoraConfig(r=4, target_modules="all-linear",
                                                 lora_dropout=0.1, task_type="CAUSAL_LM"))
    model.train()
    model.base_model.model.model.layers[3].eval()          # a mixed pattern must survive
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    model(input_ids=ids, labels=ids).loss.backward()
    flags = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    req = {n: p.requires_grad for n, p in model.named_parameters()}
    torch.manual_seed(123)
    import random

    import numpy as np
    random.seed(5)
    np.random.seed(5)
    rng = torch.get_rng_state()
    mon = EarlyWarningMonitor([MonitorTarget.from_direction(_direction(sub))], _probe(), sub,
                              events=tmp_path / "ev.jsonl")
    evs = mon.step(model, 0)
    assert [e["event"] for e in evs] == ["check"]
    assert torch.equal(torch.get_rng_state(), rng)
    assert random.random() == random.Random(5).random()
    assert np.random.rand() == np.random.RandomState(5).rand()
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert {n: p.requires_grad for n, p in model.named_parameters()} == req
    for n, p in model.named_parameters():
        if n in grads:
            assert torch.equal(p.grad, grads[n]), n
    assert mon.step(model, 1) == []                          # off the cadence: nothing read
    # the statistic equals the projection computed directly on the same rows
    from persona_probe.capture import collect_rows
    from persona_probe.training.callbacks import training_subject

    model.eval()
    acts, idx = collect_rows(training_subject(sub, model), _probe(),
                             ["blocks.15.hook_resid_post"], "response")
    proj = acts["blocks.15.hook_resid_post"] @ mon.targets[0].direction
    per_item = torch.stack([proj[idx["item"] == i].mean() for i in range(3)])
    assert evs[0]["persona/rnd@15/projection"] == pytest.approx(float(per_item.mean()),
                                                                rel=1e-4)


@pytest.mark.slow
def test_faults_inside_the_monitor_never_stop_training(subject, data_dir, tmp_path):
    """A statistic that raises and a hook point that disappears mid-run: training finishes and
    each fault is an error event."""
    from transformers import TrainerCallback

    from persona_probe.training.finetune import FinetuneConfig, finetune

    class Flaky(MonitorTarget):
        calls = 0

        def values(self, rows):
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise RuntimeError("statistic exploded")
            return super().values(rows)

    d = _direction(subject)
    flaky = Flaky("flaky", d.hook(15), direction=d.at(15))
    mon = EarlyWarningMonitor([flaky], _probe(), subject, every_n_steps=1,
                              events=tmp_path / "ev.jsonl")

    class BreakHook(TrainerCallback):   # after step 1: the target's layer no longer exists
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                flaky.hook = "blocks.99.hook_resid_post"

    out = finetune(FinetuneConfig(data=EM, **TINY), tmp_path / "ft",
                   callbacks=[mon.callback(), BreakHook()])
    assert json.loads((out / "persona_probe.json").read_text())["steps"] == 3
    ev = read_events(tmp_path / "ev.jsonl")
    errors = [e for e in ev if e["event"] == "error"]
    assert [e["step"] for e in errors] == [1, 2, 3]
    assert "statistic exploded" in errors[0]["error"]
    assert "layer 99" in errors[1]["error"]
    assert [e["step"] for e in ev if e["event"] == "check"] == [0]
    assert ev[-1]["event"] == "end"


@pytest.mark.slow
def test_alarm_actions_stop_and_steer(subject, data_dir, tmp_path):
    from persona_probe.hooks import decoder_layers
    from persona_probe.models import load_subject
    from persona_probe.training.finetune import FinetuneConfig, finetune

    d = _direction(subject)
    target = [MonitorTarget.from_direction(d)]
    # stop: an always-true threshold alarms at the step-0 check; training saves and ends at 1
    mon = EarlyWarningMonitor(target, _probe(), subject, every_n_steps=1,
                              rule=ThresholdRule(-math.inf), actions=["stop"],
                              events=tmp_path / "stop.jsonl")
    out = finetune(FinetuneConfig(data=EM, **TINY), tmp_path / "stopped",
                   callbacks=[mon.callback()], keep_checkpoints=True)
    assert json.loads((out / "persona_probe.json").read_text())["steps"] == 1
    assert (out / "checkpoints" / "checkpoint-1").is_dir()
    ev = read_events(tmp_path / "stop.jsonl")
    assert first_alarm(ev) == 0
    assert any(e["event"] == "action" and e["action"] == "stop" for e in ev)
    # steer: hooks on the training model after the alarm, none left when training ends
    base = load_subject(subject.spec)
    seen = []

    from transformers import TrainerCallback

    class CountHooks(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            seen.append(sum(len(layer._forward_hooks) for layer in decoder_layers(model)))

    mon = EarlyWarningMonitor(target, _probe(), base, every_n_steps=1,
                              rule=ThresholdRule(-math.inf),
                              actions=["log", SteerAction(d, 4.0, [15])],
                              events=tmp_path / "steer.jsonl")
    finetune(FinetuneConfig(data=EM, **TINY), tmp_path / "steered", subject=base,
             callbacks=[mon.callback(), CountHooks()])
    assert seen == [1, 1, 1]
    assert sum(len(layer._forward_hooks) for layer in decoder_layers(base.model)) == 0
    ev = read_events(tmp_path / "steer.jsonl")
    assert [e["action"] for e in ev if e["event"] == "action"] == ["steer"]


def test_timeline_figure_from_events(tmp_path):
    from persona_probe.figures import early_warning_timeline, write_figure

    events = [{"event": "check", "step": s, "persona/evil@15/projection": v,
               "persona/evil@15/projection_se": 0.05, "persona/evil@15/threshold": 0.3}
              for s, v in [(0, 0.0), (5, 0.2), (10, 0.5)]]
    events.append({"event": "alarm", "step": 10, "target": "evil@15", "rule": "zscore"})
    fig = early_warning_timeline(events, behaviour=[(0, 0.1), (10, 0.6)],
                                 behaviour_threshold=0.5)
    names = [t.name for t in fig.data]
    assert "projection" in names and "alarm threshold" in names
    assert "behavioural rate" in names
    assert fig.layout.xaxis.title.text == "training step"
    assert list(fig.data[names.index("projection")].y) == [0.0, 0.2, 0.5]
    assert any("alarm @ 10" in (a.text or "") for a in fig.layout.annotations)
    (html,) = write_figure(fig, tmp_path / "timeline")
    assert html.read_text().count("alarm threshold") >= 1
    with pytest.raises(ValueError, match="targets here"):
        early_warning_timeline(events, target="nope")


def test_mirrors_to_wandb_and_a_missing_tensorboard_is_an_error_event(subject, tmp_path):
    import importlib.util

    target = [MonitorTarget.from_direction(_direction(subject))]
    if importlib.util.find_spec("wandb") is not None:
        import wandb

        run = wandb.init(mode="offline", dir=str(tmp_path), project="persona-probe-test")
        try:
            mon = EarlyWarningMonitor(target, _probe(), subject, every_n_steps=1,
                                      mirror="wandb", events=tmp_path / "wb.jsonl")
            mon.step(subject.model, 0)
            mon.step(subject.model, 1)
            assert run.summary["persona/rnd@15/projection"] == pytest.approx(
                read_events(tmp_path / "wb.jsonl")[1]["persona/rnd@15/projection"])
        finally:
            run.finish()
        assert not any(e["event"] == "error" for e in read_events(tmp_path / "wb.jsonl"))
    mon = EarlyWarningMonitor(target, _probe(), subject, mirror="tensorboard:" + str(tmp_path),
                              events=tmp_path / "tb.jsonl")
    mon.step(subject.model, 0)
    ev = read_events(tmp_path / "tb.jsonl")
    assert ev[0]["event"] == "check"
    if importlib.util.find_spec("tensorboard") is None:
        assert ev[1]["event"] == "error" and ev[1]["where"] == "mirror"
        assert "tensorboard" in ev[1]["error"].lower()


@pytest.mark.slow
def test_monitored_finetune_reports_lead_time(subject, data_dir, tmp_path):
    from persona_probe.models import load_subject
    from persona_probe.training.early_warning import monitored_finetune, trait_preference
    from persona_probe.training.finetune import FinetuneConfig
    from persona_probe.traits import load_trait, trait_questions

    base = load_subject(subject.spec)
    evil = load_trait("evil")
    behaviour = trait_preference(evil, trait_questions("heldout")[:2])
    rates = behaviour(base)
    # one value per question (the bootstrap unit), each a share of the 6 x 6 reply pairs
    assert rates.shape == (2,) and all(float(36 * r).is_integer() and 0 <= r <= 1 for r in rates)
    mon = EarlyWarningMonitor([MonitorTarget.from_direction(_direction(subject))], _probe(),
                              base, every_n_steps=1, rule=ThresholdRule(-math.inf),
                              events=tmp_path / "ev.jsonl")
    res = monitored_finetune(FinetuneConfig(data=EM, **TINY), tmp_path / "ft", base, mon,
                             behaviour, 1, threshold=-1.0, behaviour_name="evil_preference")
    assert [p["step"] for p in res["behaviour"]] == [0, 1, 2, 3]
    assert res["behaviour"][0]["mean"] == pytest.approx(rates.mean())
    assert (res["alarm_step"], res["behaviour_crossing_step"], res["lead_time"]) == (0, 0, 0)
    assert json.loads((tmp_path / "ft" / "lead_time.json").read_text())["lead_time"] == 0
