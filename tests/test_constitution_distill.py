"""Constitution distillation against its drafts control (``experiments.constitution_distill``):
the config refuses designs that cannot back a claim, the training prompts are the narrow
categories minus every evaluated prompt (emergent_alignment's split), every arm trains on the
same matched prompts, and the aggregation finds a planted sft − drafts effect and none where
finetuning raises refusal alike with or without a constitution. Whether a constitution does
raise held-out refusal is the experiment's result (``experiments/constitution_distill.py``),
not asserted here."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from persona_probe.errors import PersonaProbeError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "configs" / "constitution_distill-smollm2-cpu.json"


@pytest.mark.parametrize("bad, match", [
    ({"seeds": [0, 1]}, ">= 3 seeds"),
    ({"seeds": [0, 0, 1]}, "distinct"),
    ({"constitutions": ["stoicism"]}, "built-in"),
    ({"constitutions": []}, "built-in"),
    ({"finetune": {"data": "x.jsonl"}}, "may not set"),
    ({"finetune": {"seed": 3}}, "may not set"),
    ({"finetune": {"max_steps": 0}}, "max_steps"),
    ({"eval_per_category": 12}, "leave training prompts"),
    ({"train_per_category": 9}, "unreserved prompts"),
    ({"temperature": 0.0}, "temperature"),
    ({"goal_min_constitutions": 5}, "goal_min_constitutions"),
    ({"primary_measure": "probe_refusal"}, "primary_measure"),
    ({"goal_level": 1.0}, "goal_level"),
])
def test_configs_that_would_break_the_design_are_refused(bad, match):
    from persona_probe.experiments.constitution_distill import (
        ConstitutionDistillExperimentConfig as Cfg)

    with pytest.raises(PersonaProbeError, match=match):
        Cfg(**bad)
    with pytest.raises(PersonaProbeError, match=match) as exc:
        Cfg.from_dict(bad, "my.json")
    assert str(exc.value).startswith("my.json: ")
    Cfg(seeds=(0,), tiny=True)                  # a smoke run may use one seed


def test_training_prompts_are_emergent_alignments_narrow_pool_minus_the_trained_set():
    from persona_probe.experiments.constitution_distill import (
        ConstitutionDistillExperimentConfig)
    from persona_probe.experiments.emergent_alignment import (EmergentAlignmentConfig,
                                                              split_prompts)

    cfg = ConstitutionDistillExperimentConfig()
    train, trained = cfg.split()
    pool, reserved = split_prompts(EmergentAlignmentConfig())
    narrow = {"harassment", "illegal_behaviour"}
    assert len(train) == 16 and len(trained) == 8
    assert {p.category for p in train} == {p.category for p in trained} == narrow
    assert {p.id for p in train} == {p.id for p in pool if p.category in narrow}
    assert {p.id for p in trained} == {p.id for p in reserved if p.category in narrow}
    assert not {p.prompt for p in train} & {p.prompt for p in trained}
    # the same prompts at every seed (only the answers are drawn per seed)
    dc = cfg.distill_config("virtue_ethics", 2, [p.id for p in trained])
    from persona_probe.training.distill import training_prompts
    assert [p.id for p in training_prompts(dc)] == [p.id for p in train]
    tiny = ConstitutionDistillExperimentConfig(seeds=(0,), tiny=True, train_per_category=2,
                                               eval_per_category=1)
    assert len(tiny.split()[0]) == 4 and len(tiny.split()[1]) == 2
    names = [c["name"] for c in cfg.contrasts() if c["role"] == "primary"]
    assert names == [f"sft-{c}-drafts" for c in cfg.constitutions]
    assert cfg.subjects() == ["instruct", "drafts", *(f"sft-{c}" for c in cfg.constitutions)]


@pytest.mark.usefixtures("data_dir")        # XSTest's safe prompts are shared data
def test_evaluated_sets_and_the_committed_configs_dry_run():
    from persona_probe.experiments.constitution_distill import (
        ConstitutionDistillExperimentConfig, eval_prompts)
    from persona_probe.experiments.plan import plan_config

    cfg = ConstitutionDistillExperimentConfig()
    sets = eval_prompts(cfg)
    train, _ = cfg.split()
    assert {k: len(v) for k, v in sets.items()} == {"held_out": 72, "trained": 8,
                                                    "xstest_safe": 50}
    assert not {p.category for p in sets["held_out"]} & {p.category for p in train}
    evaluated = {p.prompt for v in sets.values() for p in v}
    assert not evaluated & {p.prompt for p in train}
    plan = plan_config(CONFIG)
    assert not plan.problems, plan.problems
    k = len(cfg.constitutions)
    assert len(plan.stages) == 1 + 3 * (k + 2 * (k + 1)) + 1
    assert plan.stages[0]["stage"] == "eval-instruct"
    assert {"ft-drafts-seed2", "ft-sft-human_authority-seed0", "data-deontology-seed1"} <= {
        s["stage"] for s in plan.stages}


def test_every_arm_trains_on_the_prompts_all_arms_kept(tmp_path):
    from persona_probe.experiments.constitution_distill import _write_matched, matched_ids

    def man(cons: list[str], drafts: list[str]) -> dict:
        return {"arms": {"constitution": {"dataset": {"ids": cons}},
                         "drafts": {"dataset": {"ids": drafts}}}}
    mans = {"deontology": man(["a", "b", "c"], ["a", "b", "c", "d"]),
            "virtue_ethics": man(["a", "c", "d"], ["a", "b", "c", "d"])}
    keep = matched_ids(mans)
    assert keep == ["a", "c"]
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"q {i}"},
        {"role": "assistant", "content": a}], "id": i}) + "\n" for i, a in (
            ("a", "I'm sorry, but no."), ("b", "Sure, here it is."), ("c", "Of course! Go."),
            ("d", "Fine."))))
    counts = _write_matched(src, keep, tmp_path / "m.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == keep
    assert counts == {"used": 2, "keyword_refusals": 1, "opens_like_refusal": 1,
                      "opens_like_compliance": 1}
    with pytest.raises(PersonaProbeError, match="lacks 1"):
        _write_matched(src, ["a", "z"], tmp_path / "x.jsonl")


def _rows(cfg, sets, shifts: dict[str, float], rng) -> dict:
    """Synthetic per-prompt scores: a shared prompt baseline with a large spread (removed by
    pairing), each subject shifted by ``shifts`` (0 when absent), small per-cell noise; the
    instruct model's rows are one measurement shared by every seed, as in the run."""
    n = len(next(iter(sets.values())))
    base = rng.normal(-0.2, 0.3, n)
    out = {}
    inst = {name: [{"logprob_score": v, "refused_logprob": v > 0} for v in base]
            for name in sets}
    for s in cfg.seeds:
        out[("instruct", s)] = inst
        for sub in cfg.arms():
            vals = base + shifts.get(sub, 0.0) + rng.normal(0, 0.02, n)
            out[(sub, s)] = {name: [{"logprob_score": v, "refused_logprob": v > 0}
                                    for v in vals] for name in sets}
    return out


def test_aggregate_finds_a_planted_sft_minus_drafts_effect_and_none_when_there_is_none():
    from persona_probe.experiments.constitution_distill import (
        SETS, ConstitutionDistillExperimentConfig, aggregate, summarize)

    rng = np.random.default_rng(0)
    cfg = ConstitutionDistillExperimentConfig(n_boot=500)
    n = 24
    sets = {name: [SimpleNamespace(id=f"{name}/{i}", category=f"c{i % 3}") for i in range(n)]
            for name in SETS}
    # every finetune raises refusal by +0.09 (the earlier runs' drafts effect); deontology's
    # answers raise it by 0.2 more
    up = {arm: 0.09 for arm in cfg.arms()}
    res = aggregate(cfg, _rows(cfg, sets, {**up, "sft-deontology": 0.29}, rng), sets)
    c = res["constitution_distill"]["held_out"]["contrasts"]
    e = c["sft-deontology-drafts"]["logprob_score"]
    assert abs(e["mean"] - 0.2) < 0.02 and e["lo"] > 0.15
    assert e["n_seeds"] == 3 and e["n_items"] == n and len(e["per_seed"]) == 3
    assert abs(c["drafts-instruct"]["logprob_score"]["mean"] - 0.09) < 0.02
    assert c["sft-virtue_ethics-drafts"]["logprob_score"]["lo"] < 0 < \
        c["sft-virtue_ethics-drafts"]["logprob_score"]["hi"]
    g = res["goal"]
    assert g["n_above_0"] == 1 and g["met"] is True and g["level"] == pytest.approx(0.9875)
    assert g["per_constitution"]["deontology"]["above_0"]
    assert g["per_constitution"]["deontology"]["estimate"]["level"] == pytest.approx(0.9875)
    per = res["constitution_distill"]["held_out"]["per_category"]
    assert set(per) == {"c0", "c1", "c2"} and per["c0"]["n"] == 8
    assert per["c1"]["contrasts"]["sft-deontology-drafts"]["mean"] == pytest.approx(0.2,
                                                                                    abs=0.03)
    pw = res["power"]
    assert 0 < pw["max_ci_half_width_95"] < 0.05 and pw["mde_80"] > pw["max_ci_half_width_95"]
    # a rise that the drafts share: sft - instruct is up, sft - drafts is not, no goal
    res0 = aggregate(cfg, _rows(cfg, sets, up, rng), sets)
    c0 = res0["constitution_distill"]["held_out"]["contrasts"]
    assert c0["sft-deontology-instruct"]["logprob_score"]["lo"] > 0.05
    assert res0["goal"]["n_above_0"] == 0 and res0["goal"]["met"] is False
    assert "goal: 0 of 4" in summarize(res0)
    json.dumps(res)                                       # results stay plain JSON
    tiny = ConstitutionDistillExperimentConfig(seeds=(0,), tiny=True, n_boot=200,
                                               constitutions=("deontology",))
    g1 = aggregate(tiny, _rows(tiny, sets, {"sft-deontology": 0.3}, rng), sets)["goal"]
    assert g1["met"] is None and g1["level"] == pytest.approx(0.95)   # no claim; 1 test


def test_draw_writes_the_figures_from_results(tmp_path):
    from persona_probe.experiments.constitution_distill import (
        SETS, ConstitutionDistillExperimentConfig, aggregate, draw)

    rng = np.random.default_rng(1)
    cfg = ConstitutionDistillExperimentConfig(n_boot=200, constitutions=("deontology",
                                                                         "virtue_ethics"))
    sets = {name: [SimpleNamespace(id=f"{name}/{i}", category=f"c{i % 2}") for i in range(6)]
            for name in SETS}
    res = aggregate(cfg, _rows(cfg, sets, {"sft-deontology": 0.1}, rng), sets)
    res["config"] = dataclasses.asdict(cfg)      # draw reads the arms' order from it
    (tmp_path / "results.json").write_text(json.dumps(res))
    names = {p.name for p in draw(tmp_path)}
    assert {"refusal-by-arm.html", "contrasts.html", "held-out-by-category.html"} <= names
