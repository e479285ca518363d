"""The drift profile and the monitor's actions (issue 22 items 4-5): the family-wise rule keeps
the single target's false-alarm level (checked by simulation, not by its own formula),
``drift_profile`` finds a planted drifting target among quiet ones, ``act_on`` decides which
target's alarm acts (on the real model), and the monitor-actions experiment's aggregation finds a
planted action effect and none where there is none. The experiment's numbers come from
``experiments/monitor_actions.py``, not from here."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from persona_probe.errors import PersonaProbeError
from persona_probe.monitor import (EarlyWarningMonitor, MonitorError, MonitorTarget,
                                   ThresholdRule, ZScoreRule, drift_profile, family_rule)

ROOT = Path(__file__).resolve().parent.parent


def _paired_z(changes: np.ndarray) -> np.ndarray:
    """The rule's paired statistic over the last axis (items), computed here independently."""
    return changes.mean(-1) / (changes.std(-1, ddof=1) / np.sqrt(changes.shape[-1]))


def test_family_rule_keeps_the_single_targets_level_by_simulation():
    rng = np.random.default_rng(0)
    n_targets, n_items = 17, 16
    single = ZScoreRule(z=3.0)
    fam = family_rule(single, n_targets, n_items)
    assert fam.z > single.z and fam.consecutive == single.consecutive
    # null: per-item changes with no shift, for every target at one check (100k checks, in
    # chunks to bound memory)
    hits = np.zeros(3)
    for _ in range(5):
        z = _paired_z(rng.standard_normal((20_000, n_targets, n_items)))
        hits += [(z[:, 0] > single.z).sum(),            # one target, unadjusted
                 (z > fam.z).any(axis=1).sum(),         # any of 17, adjusted
                 (z > single.z).any(axis=1).sum()]      # any of 17, unadjusted
    single_rate, family_rate, unadjusted = hits / 100_000
    # Bonferroni: at most the single target's rate (each rate's Monte Carlo SE ~0.0002; a
    # threshold read as normal instead of t would give ~0.015 and fail)
    assert family_rate <= single_rate + 0.001
    assert unadjusted > 10 * single_rate      # the problem it solves is real
    # the normal reading (no n_items) is the textbook Bonferroni quantile
    from scipy.stats import norm
    assert family_rule(single, 10).z == pytest.approx(norm.isf(norm.sf(3.0) / 10))
    assert family_rule(single, 1, 16) is single
    # t on 15 degrees of freedom, not 16: the 0.45% one-sided level spread over 17 targets
    assert fam.z == pytest.approx(4.3896, abs=1e-3)
    with pytest.raises(MonitorError, match="already corrected"):
        family_rule(fam, 17, 16)                 # never corrected twice
    with pytest.raises(MonitorError, match="not one: leave n_items out"):
        family_rule(ZScoreRule(mode="checks"), 3, 16)
    with pytest.raises(MonitorError, match="n_items must be >= 2"):
        family_rule(single, 3, 1)
    with pytest.raises(MonitorError, match="adjusts a ZScoreRule"):
        family_rule(ThresholdRule(1.0), 3)


def _events(values_per_target: dict[str, np.ndarray], steps: list[int]) -> list[dict]:
    """Check events as the monitor writes them: per-item values for every target."""
    return [{"event": "check", "step": s,
             **{f"persona/{n}/items": v[i].tolist() for n, v in values_per_target.items()}}
            for i, s in enumerate(steps)]


def test_drift_profile_finds_the_planted_target_and_only_it():
    rng = np.random.default_rng(1)
    steps = [0, 2, 4, 6, 8]
    items = rng.standard_normal(16)               # between-item spread, shared by all checks
    targets = {f"quiet{i}": items + 0.05 * rng.standard_normal((5, 16)) for i in range(9)}
    # the planted one drifts up by 0.2 between-item SDs per check, on every item alike
    targets["drifting"] = (items + 0.2 * np.arange(5)[:, None]
                           + 0.05 * rng.standard_normal((5, 16)))
    prof = drift_profile(_events(targets, steps), ZScoreRule(z=3.0, consecutive=2))
    assert prof[0]["target"] == "drifting"
    assert prof[0]["alarm_step"] == 4             # the first two checks after the baseline
    dr = targets["drifting"]     # 0.8 in units of the step-0 items' own spread
    assert prof[0]["change"] == pytest.approx(0.8, abs=0.05)
    assert prof[0]["change_sd_units"] == pytest.approx(
        (dr[-1] - dr[0]).mean() / dr[0].std(ddof=1))
    assert all(r["alarm_step"] is None for r in prof[1:])
    assert {r["family_size"] for r in prof} == {10}
    assert prof[0]["family_z"] == pytest.approx(family_rule(ZScoreRule(), 10, 16).z)
    # a subset of rows is read under the whole family's threshold, not a smaller one
    sub = drift_profile(_events(targets, steps), ZScoreRule(), targets=["drifting", "quiet0"])
    assert [r["family_size"] for r in sub] == [10, 10]
    assert sub[0]["can_alarm"] and sub[0]["items_changed"] == 16
    with pytest.raises(MonitorError, match="no per-item values"):
        drift_profile(_events(targets, steps), ZScoreRule(), targets=["absent"])
    with pytest.raises(MonitorError, match="no check events"):
        drift_profile([{"event": "end"}], ZScoreRule())


def test_act_on_decides_whose_alarm_acts(subject):
    """Two targets of opposite sign on the same probe: a threshold at 0 alarms exactly one;
    ``stop`` follows only an alarm of a target named in ``act_on``."""
    from persona_probe.directions import random_direction
    from persona_probe.prompts import PromptItem

    probe = [PromptItem(f"p{i}", [{"role": "user", "content": q},
                                  {"role": "assistant", "content": a}])
             for i, (q, a) in enumerate([("What should I cook?", "A vegetable soup."),
                                         ("How do I relax?", "Take a slow walk.")])]
    d = random_direction(subject.d_model, [15], 0, name="rnd")
    up = MonitorTarget.from_direction(d, name="up")
    down = MonitorTarget("down", up.hook, direction=-up.direction)
    first = EarlyWarningMonitor([up, down], probe, subject, rule=ThresholdRule(0.0),
                                events=None).step(subject.model, 0, force=True)[0]
    alarmed = "up" if first["persona/up/projection"] > 0 else "down"
    quiet = "down" if alarmed == "up" else "up"
    for act_on, stops in (([quiet], False), ([alarmed], True), (None, True)):
        mon = EarlyWarningMonitor([up, down], probe, subject, rule=ThresholdRule(0.0),
                                  actions=["stop"], act_on=act_on, events=None)
        ev = mon.step(subject.model, 0, force=True)
        assert [e["target"] for e in ev if e["event"] == "alarm"] == [alarmed]
        assert mon.should_stop is stops
    with pytest.raises(MonitorError, match="act_on"):
        EarlyWarningMonitor([up, down], probe, subject, act_on=["sideways"])


def _synthetic_runs(cfg, stop_effect: float, rng) -> list[dict]:
    """Per-run rows as ``analyse_run`` returns them: 24 questions; the log arm moves +0.3 from
    the base; the stop arm ends ``stop_effect`` below it; steering arms end where log does."""
    q = 24
    base = rng.normal(0, 0.2, q)
    rows = []
    for s in cfg.seeds:
        seed_shift = rng.normal(0, 0.02)
        log = base + 0.3 + seed_shift + rng.normal(0, 0.05, q)
        curve = [{"step": st, "values": (base + 0.3 * st / 16).tolist()} for st in range(0, 17, 2)]
        curve[-1]["values"] = log.tolist()
        curve[2]["values"] = (log - stop_effect).tolist()        # the stop step (4)
        for arm in cfg.arms():
            final = {"log": log, "stop": log - stop_effect,
                     "neutral": base - 0.05 + rng.normal(0, 0.05, q)}.get(
                arm, log + rng.normal(0, 0.05, q))
            prof = [{"target": n, "alarm_step": 4 if (n == "evil" and arm != "neutral")
                     else None, "max_z": 10.0 if n == "evil" else 1.0, "change": 0.0,
                     "change_sd_units": 0.0, "z": [None, 1.0], "steps": [0, 2]}
                    for n in ("evil", "evil (independent)", "screened latent 1",
                              "random latent 2")]
            rows.append({"arm": arm, "seed": s, "steps": 4 if arm == "stop" else 16,
                         "alarm_step": None if arm == "neutral" else 4,
                         "offline_alarm_step": None if arm == "neutral" else 4,
                         "behaviour_curve": curve, "final_behaviour": final.tolist(),
                         "final_projection_change": {"evil": 0.1,
                                                     "evil (independent)": 0.05},
                         "profile": prof})
    return rows


def test_actions_aggregate_finds_a_planted_effect_and_none_where_there_is_none():
    from persona_probe.experiments.monitor_actions import MonitorActionsConfig, aggregate

    cfg = MonitorActionsConfig(seeds=(0, 1, 2))
    rule = family_rule(cfg.base_rule, 4, 16)
    res = aggregate(cfg, _synthetic_runs(cfg, 0.2, np.random.default_rng(2)), rule)
    stop = res["arms"]["stop"]
    assert stop["minus_log"]["mean"] == pytest.approx(-0.2)
    assert stop["minus_log"]["hi"] < 0 and stop["minus_log"]["n_seeds"] == 3
    assert stop["minus_log"]["n_items"] == 24
    assert stop["prevented_share"]["mean"] == pytest.approx(0.2 / 0.3, abs=0.05)
    steer = res["arms"]["steer+0.1"]["minus_log"]
    assert steer["lo"] < 0 < steer["hi"]                   # no planted effect, none found
    assert res["goals"]["early_stop_lowers_final_trait"] is True
    assert res["goals"]["steer+0.1_lowers_final_trait"] is False
    assert res["goals"]["log_run_moves_trait"] is True
    assert all(c["max_abs_diff_vs_log_curve"] == pytest.approx(0) for c in res["stop_checkpoint"])
    assert res["profile_summary"]["screened_latent_alarms_log"] == 0
    assert res["offline_online_alarm_mismatches"] == 0
    json.dumps(res)                                       # results stay plain JSON


def test_monitor_actions_config_refuses_what_cannot_back_a_claim():
    from persona_probe.experiments.monitor_actions import MonitorActionsConfig
    from persona_probe.experiments.plan import plan_config

    with pytest.raises(PersonaProbeError, match=">= 3 seeds"):
        MonitorActionsConfig(seeds=(0, 1))
    with pytest.raises(PersonaProbeError, match="non-zero"):
        MonitorActionsConfig(steer_alphas=(0.0,))
    with pytest.raises(PersonaProbeError, match="must be in profile_traits"):
        MonitorActionsConfig(profile_traits=("sycophancy",))
    with pytest.raises(PersonaProbeError, match="may not set"):
        MonitorActionsConfig(finetune={"seed": 3})
    plan = plan_config(ROOT / "experiments" / "configs" / "monitor_actions-smollm2-cpu.json")
    assert not plan.problems and len(plan.stages) == 4 + 3 * 5


def test_the_readme_renderer_states_what_the_aggregate_says():
    """The README block is rendered from aggregate()'s output: its numbers come from the
    results, and the stop-checkpoint sentence follows the check instead of asserting it."""
    from persona_probe.experiments.monitor_actions import MonitorActionsConfig, aggregate
    from persona_probe.experiments.readme_tables import RENDERERS

    cfg = MonitorActionsConfig(seeds=(0, 1, 2))
    rule = family_rule(cfg.base_rule, 4, 16)
    runs = _synthetic_runs(cfg, 0.2, np.random.default_rng(2))
    res = {**aggregate(cfg, runs, rule), "config": dataclasses.asdict(cfg), "runs": runs,
           "seeds": list(cfg.seeds), "git_sha": "abc", "from_scratch": True,
           "stage_git_shas": {"x": "abc"}, "compute_seconds": {"x": 60.0},
           "material": {"probe_items": 16}}
    text = RENDERERS["monitor_actions"][1](res)
    stop = res["arms"]["stop"]["minus_log"]
    assert f"{stop['mean']:+.3f} [{stop['lo']:+.3f}, {stop['hi']:+.3f}]" in text
    assert "agree within" in text and "does not reproduce" not in text
    bad = json.loads(json.dumps(res))
    bad["stop_checkpoint_matches"] = False
    assert "does not reproduce" in RENDERERS["monitor_actions"][1](bad)
