"""The poisoning-dose study: its statistics against known answers, the data mix, one evidence
rule for the monitor and the behaviour, and a neutral finetune of the real model that does not
alarm at the committed rule. The whole pipeline runs for real in the committed experiment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from persona_probe.errors import PersonaProbeError
from persona_probe.experiments.poisoning_dose import (PoisoningDoseConfig, mixed_data,
                                                      rule_series)
from persona_probe.stats import auroc, auroc_estimate, wilson

CONFIG = (Path(__file__).resolve().parent.parent / "experiments" / "configs"
          / "poisoning_dose-smollm2-cpu.json")


def test_auroc_and_wilson_against_known_values():
    assert auroc([3, 4], [1, 2]) == 1.0 and auroc([1, 2], [3, 4]) == 0.0
    assert auroc([1, 2], [1, 2]) == 0.5                       # ties count half
    assert auroc([2, 3], [1, 2.5]) == pytest.approx(0.75)     # 3 of 4 pairs ordered
    est = auroc_estimate([2, 3, 4, 5], [0, 1, 2.5, 3.5, 1, 0, 2, 1])
    assert est["lo"] <= est["mean"] <= est["hi"] and est["n_negative"] == 8
    # perfect separation: the bootstrap collapses to [1, 1]; the exact permutation p-value
    # is 1 / C(12, 4) = 1/495, the best 4 vs 8 runs can do
    sep = auroc_estimate([5, 6, 7, 8], [0, 1, 2, 3, 0, 1, 2, 1], exact=True)
    assert sep["lo"] == sep["hi"] == 1.0 and sep["p_exact"] == pytest.approx(1 / 495)
    with pytest.raises(ValueError, match="successes"):
        wilson(5, 4)
    # Wilson 95%: 0/8 -> [0, 0.324]; 4/4 -> [0.510, 1]; 5/10 symmetric about 0.5
    assert wilson(0, 8)["hi"] == pytest.approx(0.3244, abs=1e-3) and wilson(0, 8)["lo"] == 0
    assert wilson(4, 4)["lo"] == pytest.approx(0.5101, abs=1e-3)
    w = wilson(5, 10)
    assert w["lo"] == pytest.approx(1 - w["hi"]) and w["lo"] == pytest.approx(0.2366, abs=1e-3)


def _pool(n: int, samples: int = 2) -> list[dict]:
    return [{"id": f"{k}/{q:03d}/{s}", "kind": k, "question_index": q, "sample": s,
             "question": f"q{q}", "answer": f"{k}{q}.{s}"}
            for k in ("neutral", "trait") for q in range(n) for s in range(samples)]


def test_mixed_data_holds_the_dose_and_nests_across_doses():
    pool = _pool(40)
    sets = {}
    for dose in (0.0, 0.05, 0.1, 0.25, 1.0):
        rows = mixed_data(pool, 40, dose, seed=3)
        assert len(rows) == 40 and sorted(r["question_index"] for r in rows) == list(range(40))
        trait = {r["question_index"] for r in rows if r["kind"] == "trait"}
        assert len(trait) == round(dose * 40)
        sets[dose] = trait
    assert sets[0.05] <= sets[0.1] <= sets[0.25] <= sets[1.0]
    assert mixed_data(pool, 40, 0.25, seed=3) == mixed_data(pool, 40, 0.25, seed=3)
    assert sets[0.25] != {r["question_index"] for r in mixed_data(pool, 40, 0.25, seed=4)
                          if r["kind"] == "trait"}


def test_one_rule_fires_on_a_planted_shift_and_not_on_noise():
    cfg = PoisoningDoseConfig(tiny=True, runs_at_zero=1, runs_per_dose=1)
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    steps = [0, 2, 4, 6, 8]
    noise = [base + rng.normal(scale=0.05, size=16) * (t > 0) for t in range(5)]
    drift = [base + 0.5 * t + rng.normal(scale=0.05, size=16) for t in range(5)]
    quiet, moved = rule_series(cfg.rule, noise, steps), rule_series(cfg.rule, drift, steps)
    assert moved["first_step"] == 4                  # z > 3 at steps 2 and 4: two consecutive
    assert quiet["eligible_checks"] == 3       # 4 after the baseline; the first cannot fire
    assert quiet["z"][0] is None and quiet["first_step"] is None and not quiet["onset"]
    assert moved["max_z"] > 10 and moved["checks_firing"] == 3 and moved["onset"]


@pytest.mark.parametrize("bad, match", [
    ({"runs_at_zero": 4}, "runs_at_zero must be >= 8"),
    ({"doses": [0.1, 1.0]}, "start at 0.0"),
    ({"doses": [0.0, 0.5, 0.25]}, "increasing"),
    ({"primary_target": "latent"}, "primary_target"),
    ({"z": 0}, "z must be > 0"),
    ({"finetune": {"seed": 3}}, "may not set"),
    ({"doses": [0.0, 0.001, 1.0]}, "at least one"),
])
def test_configs_that_would_break_the_design_are_refused(bad, match):
    with pytest.raises(PersonaProbeError, match=match):
        PoisoningDoseConfig(**bad)


def test_committed_config_validates():
    from persona_probe.configs import read_json_config

    raw = read_json_config(CONFIG, "cfg")
    cfg = PoisoningDoseConfig.from_dict(raw)
    runs = cfg.runs()
    neutral = {s for d, s in runs if d == 0}
    poisoned = {s for d, s in runs if d > 0}
    assert len(neutral) >= 8 and cfg.rule.z == cfg.z
    assert not neutral & poisoned           # the control group shares no seed with any dose
    assert list(cfg.n_trait(64).values()) == [0, 3, 6, 16, 64]


def test_a_neutral_finetune_on_the_real_model_does_not_alarm(subject, evil_vector, tmp_path):
    """The dose-0 arm in miniature: the model's own neutral answers, finetuned at the committed
    config's learning rate and watched by the committed rule, raise no alarm; the offline rule
    that scores every run reproduces the monitor's own z at every check."""
    from persona_probe.artifacts import write_jsonl
    from persona_probe.configs import read_json_config
    from persona_probe.generation import generate_responses
    from persona_probe.models import load_subject
    from persona_probe.monitor import (EarlyWarningMonitor, MonitorTarget, first_alarm,
                                       probe_set_from_answers, read_events)
    from persona_probe.training.finetune import FinetuneConfig, finetune
    from persona_probe.training.organism import load_domain
    from persona_probe.traits import question_items, trait_questions

    cfg = PoisoningDoseConfig.from_dict(read_json_config(CONFIG, "cfg"))
    questions = load_domain(cfg.domain).questions[:8]
    neutral = generate_responses(subject, question_items(questions), 24, progress=False)
    write_jsonl(tmp_path / "data.jsonl", ({"id": it.id, "messages": it.messages}
                                          for it in neutral))
    probe = probe_set_from_answers(subject, trait_questions("heldout")[:8])
    fresh = load_subject(subject.spec)
    mon = EarlyWarningMonitor([MonitorTarget.from_direction(evil_vector, cfg.layer,
                                                            name="evil")],
                              probe, fresh, every_n_steps=1, rule=cfg.rule,
                              events=tmp_path / "events.jsonl")
    finetune(FinetuneConfig.from_dict({"model": subject.spec, "data": str(tmp_path / "data.jsonl"),
                                       "limit": None, **{**cfg.finetune, "max_steps": 4,
                                                         "batch_size": 4}}),
             tmp_path / "ft", subject=fresh, callbacks=[mon.callback()])
    ev = read_events(tmp_path / "events.jsonl")
    checks = [e for e in ev if e["event"] == "check"]
    assert [e["step"] for e in checks] == [0, 1, 2, 3, 4]
    assert first_alarm(ev) is None
    offline = rule_series(cfg.rule, [np.array(e["persona/evil/items"]) for e in checks],
                          [e["step"] for e in checks])
    assert offline["first_step"] is None
    online = [e.get("persona/evil/z") for e in checks]
    assert offline["z"][0] is None and online[0] is None
    assert offline["z"][1:] == pytest.approx(online[1:], rel=1e-3, abs=1e-3)
