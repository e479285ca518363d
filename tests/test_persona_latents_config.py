"""The line-1 experiment's rules are fixed in its config and checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona_probe.configs import read_json_config
from persona_probe.errors import PersonaProbeError
from persona_probe.experiments.persona_latents import PersonaLatentsConfig

CONFIGS = Path(__file__).resolve().parent.parent / "experiments" / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("persona_latents-*.json")))
def test_committed_configs_validate(name):
    cfg = PersonaLatentsConfig.from_dict(read_json_config(CONFIGS / name, name))
    label = cfg.dictionary_label
    assert cfg.primary in {f"{label} / causal screening", f"{label} / top Δ"} or \
        cfg.primary.startswith("persona vector / ")
    if not cfg.tiny:
        assert len(cfg.eval_seeds) >= 3 and cfg.selection_seed not in cfg.eval_seeds
        assert cfg.null_draws >= 100


@pytest.mark.parametrize("bad, match", [
    ({"eval_seeds": [0, 1, 2]}, "selection_seed"),
    ({"eval_seeds": [1, 2]}, ">= 3 seeds"),
    ({"null_draws": 20}, ">= 100"),
    ({"steer_alphas": [0.1, 0.2]}, "0.0"),
    ({"vector_edits": ["erase"]}, "vector_edits"),
    ({"screening": {"max_set": 0}}, "max_set"),
    ({"organism": {"domain": "knitting"}}, "knitting"),
    ({"primary": "the best row"}, "names no row"),
    ({"dictionary": "sparse coder"}, "dictionary"),
    ({"crosscoder": {"corpus": []}}, "dictionary is 'sae'"),
    ({"dictionary": "crosscoder", "primary": "crosscoder / causal screening"}, "training text"),
    ({"dictionary": "crosscoder", "primary": "crosscoder / causal screening",
      "crosscoder": {"answer_prompts": "builtin:all"}}, "base_null"),
    ({"dictionary": "crosscoder", "primary": "crosscoder / causal screening", "base_null": False,
      "crosscoder": {"answer_prompts": "builtin:all", "train": {"k": 0}}}, "k must be"),
    ({"dictionary": "crosscoder", "primary": "crosscoder / causal screening", "base_null": False,
      "crosscoder": {"answer_prompts": "builtin:all", "answer_tokens": 0}}, "answer_tokens"),
    ({"dictionary": "crosscoder", "primary": "crosscoder / causal screening", "base_null": False,
      "sae": "saes/other", "crosscoder": {"answer_prompts": "builtin:all"}}, "drop sae"),
])
def test_rules_that_would_break_the_evidence_standard_are_refused(bad, match):
    raw = read_json_config(CONFIGS / "persona_latents-smollm2-cpu.json", "cpu config")
    with pytest.raises(PersonaProbeError, match=match):
        PersonaLatentsConfig.from_dict({**raw, **bad})


def test_a_tiny_run_may_evaluate_on_its_selection_seed_but_says_so():
    raw = read_json_config(CONFIGS / "persona_latents-demo-smollm2-cpu.json", "demo config")
    cfg = PersonaLatentsConfig.from_dict(raw)
    assert cfg.tiny and cfg.eval_seeds == (cfg.selection_seed,)


class _Rows:
    def __init__(self, rows):
        self.rows = rows


def _synthetic(gap_per_seed, removed=0.5, base_move=0.0, null_removed=0.0, q=40,
               null_base_removed=None):
    """Per-question values where the finetune sits ``gap`` above the base, the screened edit
    removes ``removed`` of it, and random sets remove ``null_removed``."""
    import numpy as np

    from persona_probe.experiments.persona_latents import PersonaLatentsConfig

    rng = np.random.default_rng(0)
    cfg = PersonaLatentsConfig(organism={"trait": "evil", "domain": "cooking"},
                               eval_seeds=(1, 2, 3), null_draws=20, tiny=True,
                               steer_alphas=(0.0, 0.2, 0.4), vector_edits=("directional",))
    B = rng.normal(-1, 0.3, q)
    values = {}
    for s, g in zip(cfg.eval_seeds, gap_per_seed):
        F = B + g + rng.normal(0, 0.02, q)
        rows = {"F": F, "B": B}
        for name in ("causal screening", "top Δ", "vector directional"):
            rows[f"F|{name}"] = F - removed * g
            rows[f"B|{name}"] = B + base_move
            for j in range(cfg.null_draws):
                rows[f"F|null {name}|{j}"] = F - null_removed * g + rng.normal(0, 0.001, q)
        values[s] = _Rows({k: list(v) for k, v in rows.items()})
    steer = {"B": list(B)}
    for a in (0.2, 0.4):
        for name in ("causal screening", "top Δ", "vector"):
            steer[f"{name}|{a}"] = list(B + a)
    for j in range(cfg.null_draws):
        steer[f"null causal screening|{j}"] = list(B + 0.01 * rng.normal(size=q))
    if null_base_removed is None:
        return cfg, values, _Rows(steer)
    # the base-null stage: each random set lowers the base by null_base_removed × mean gap
    g = float(np.mean(gap_per_seed))
    base_null = {"B": list(B), **{f"B|null causal screening|{j}": list(
        B - null_base_removed * g + rng.normal(0, 0.001, q)) for j in range(cfg.null_draws)}}
    return cfg, values, _Rows(steer), _Rows(base_null)


def _aggregate(cfg, values, steer, base_null=None):
    import numpy as np

    from persona_probe.experiments.persona_latents import _aggregate as agg
    from persona_probe.stats import bootstrap, crossed_bootstrap

    sets = {"causal screening": [1, 2], "top Δ": [3, 4]}
    return agg(cfg, values, steer, sets, {}, np, crossed_bootstrap, bootstrap, base_null)


def test_aggregate_recovers_a_planted_edit_and_its_null():
    res = _aggregate(*_synthetic([0.3, 0.3, 0.3], removed=0.6, null_removed=0.0))
    row = next(r for r in res["screening"] if r["method"] == "causal screening")
    assert res["gap_resolved"] and abs(res["treatment_minus_base"]["mean"] - 0.3) < 0.01
    assert abs(row["gap_removed"]["mean"] - 0.6) < 0.01 and abs(row["null_p95"]) < 0.05
    assert abs(row["effect_finetuned"]["mean"] - 0.18) < 0.01
    assert row["base_shift"]["mean"] == 0 and row["goal"]["met"] is True
    assert row["steer_monotonic"] and row["steer_effect"]["mean"] > row["steer_null_p95"]
    vec = next(r for r in res["screening"] if r["dictionary"] == "persona vector")
    assert vec["goal"]["steer_monotonic_beyond_null"] is None and vec["goal"]["met"] is None


def test_aggregate_says_when_the_gap_is_not_there():
    res = _aggregate(*_synthetic([0.3, -0.2, 0.02], removed=0.6))
    assert not res["gap_resolved"]
    assert all(r["goal"]["met"] is False for r in res["screening"])
    assert res["gap_per_seed"]["2"] < 0 < res["gap_per_seed"]["1"]
    # a base that moves as much as the gap fails the base-shift goal even with a clear gap
    moved = _aggregate(*_synthetic([0.3, 0.3, 0.3], removed=0.6, base_move=-0.15))
    row = next(r for r in moved["screening"] if r["method"] == "causal screening")
    assert abs(row["base_shift"]["mean"] + 0.5) < 0.01 and row["goal"]["met"] is False


def test_penalized_null_separates_a_specific_edit_from_random_sets_that_lower_every_model():
    """Random sets that remove the whole gap from the finetune *and* lower the base as much
    have a high gap-removed null (the issue's goal fails) but a penalized null near 0, so a
    specific edit (F only) clears it; without the base-null stage no specificity is claimed."""
    res = _aggregate(*_synthetic([0.3, 0.3, 0.3], removed=0.6, null_removed=1.0,
                                 null_base_removed=1.0))
    row = next(r for r in res["screening"] if r["method"] == "causal screening")
    assert row["null_p95"] > 0.9 and row["goal"]["met"] is False
    assert abs(row["penalized"]["mean"] - 0.6) < 0.01
    spec = row["specificity"]
    assert abs(spec["null_p95"]) < 0.05 and spec["ci_lower_above_null_p95"] is True
    assert abs(res["nulls"]["causal screening (penalized)"]["base_shift_values"][0] + 1) < 0.05
    # the same edit moving the base by half the gap loses half of its penalized removal
    moved = _aggregate(*_synthetic([0.3, 0.3, 0.3], removed=0.6, base_move=0.15,
                                   null_removed=1.0, null_base_removed=1.0))
    row = next(r for r in moved["screening"] if r["method"] == "causal screening")
    assert abs(row["penalized"]["mean"] - 0.1) < 0.01
    plain = _aggregate(*_synthetic([0.3, 0.3, 0.3], removed=0.6))
    assert all("specificity" not in r for r in plain["screening"])
    # an unresolved gap (seeds disagree in sign) gives no verdict, whatever the shares say
    unresolved = _aggregate(*_synthetic([0.3, -0.25, 0.02], removed=0.6, null_removed=1.0,
                                        null_base_removed=1.0))
    row = next(r for r in unresolved["screening"] if r["method"] == "causal screening")
    assert not unresolved["gap_resolved"]
    assert row["specificity"]["ci_lower_above_null_p95"] is None


def test_crossed_statistic_equals_the_ratio_bootstrap_for_a_ratio():
    import numpy as np

    from persona_probe.stats import crossed_bootstrap, crossed_statistic

    rng = np.random.default_rng(1)
    num, den = rng.normal(0.2, 0.1, (3, 30)), rng.normal(1.0, 0.1, (3, 30))
    a = crossed_bootstrap(num, den)
    b = crossed_statistic([num, den], lambda x, y: x / y)
    assert (a.mean, a.lo, a.hi, *a.per_seed) == pytest.approx((b.mean, b.lo, b.hi, *b.per_seed))
    with pytest.raises(ValueError, match="shape"):
        crossed_statistic([num, den[:, :5]], lambda x, y: x / y)


def test_the_crosscoder_fingerprint_sees_defaults_and_data():
    """The crosscoder stage's inputs carry every resolved training default and each source
    file's sha256, so a changed default or data file cannot reuse a stale crosscoder."""
    from persona_probe.experiments.persona_latents import _crosscoder_inputs

    raw = read_json_config(CONFIGS / "persona_latents-crosscoder-smollm2-cpu.json", "cc config")
    cfg = PersonaLatentsConfig.from_dict(raw)
    if not all(Path(p).is_file() for p in _shared_paths(cfg)):
        pytest.skip("../shared/data is absent (the crosscoder corpus reads it)")
    got = _crosscoder_inputs(cfg, 576)
    assert got["train"]["d_model"] == 576 and "threshold_momentum" in got["train"]
    assert got["answer_tokens"] == 64 and len(got["answer_prompts_sha256"]) == 64
    assert all(len(s["sha256"]) == 64 for s in got["corpus"])
    other = PersonaLatentsConfig.from_dict({**raw, "crosscoder": {
        **raw["crosscoder"], "train": {**raw["crosscoder"]["train"], "lr": 5e-4}}})
    assert _crosscoder_inputs(other, 576) != got


def _shared_paths(cfg):
    from persona_probe.corpus import resolve_shared
    from persona_probe.errors import PersonaProbeError

    try:
        return [resolve_shared(s["path"]) for s in cfg.crosscoder["corpus"]]
    except PersonaProbeError:
        return [Path("/nonexistent")]


def _judged(name: str, harmful, coherent, **meta) -> list[dict]:
    """Judged rows as ``judged_conditions`` writes them (its condition meta included)."""
    return [{"key": f"{name}/s0/q{i}", "harmful": float(h), "refusal": 5.0,
             "coherent": bool(c), "repeated_4gram_share": 0.0, "loglik_per_token": -2.0,
             "empty": False, **meta} for i, (h, c) in enumerate(zip(harmful, coherent))]


def test_generation_summary_puts_judged_replies_beside_the_teacher_forced_effect():
    import numpy as np

    from persona_probe.experiments.persona_latents import (PersonaLatentsConfig,
                                                           _generation_summary)
    from persona_probe.experiments.readme_tables import _steering_generation_lines

    cfg = PersonaLatentsConfig(organism={"trait": "evil", "domain": "travel"},
                               eval_seeds=(1, 2, 3), null_draws=20, tiny=True,
                               steer_alphas=(0.0, 0.2, 0.4), steer_generations=1,
                               generation_null_draws=4, coherence_margin=0.1)
    rng = np.random.default_rng(0)
    n = 20
    base = 30 + rng.normal(0, 2, n)
    ok = np.ones(n, bool)
    half = ok.copy()
    half[:10] = False
    rows = {"base": _judged("base", base, ok),
            "set a0.2": _judged("s2", base + 8, ok),
            "set a0.4": _judged("s4", base + 20, ok),
            "vector a0.2": _judged("v2", base + 1, ok),
            # half the replies incoherent: they would add +90 if they were counted
            "vector a0.4": _judged("v4", base + np.where(half, 2, 90), half)}
    for j in range(3):
        rows[f"null{j} a0.4"] = _judged(f"n{j}", base + rng.normal(0, 1, n), ok, draw=j)
    # one random set between the set's effects at α 0.2 (+8) and 0.4 (+20), coherent on half
    rows["null3 a0.4"] = _judged("n3", base + np.where(half, 14, -50), half, draw=3)
    steer = _Rows({"B": [-1.0] * n, "causal screening|0.2": [-1.1] * n,
                   "causal screening|0.4": [-1.3] * n, "vector|0.2": [-0.9] * n,
                   "vector|0.4": [-0.5] * n,
                   **{f"null causal screening|{j}": [-1.0 + 0.1 * j] * n for j in range(4)}})
    g = _generation_summary(cfg, rows, ["harmful", "refusal"], steer, n)
    s, v = g["curves"]["set"], g["curves"]["vector"]
    assert [p["alpha"] for p in s] == [0.0, 0.2, 0.4]
    assert s[2]["effect"]["harmful"]["mean"] == pytest.approx(20.0)
    assert s[2]["teacher_forced_effect"] == pytest.approx(-0.3)
    assert v[2]["teacher_forced_effect"] == pytest.approx(0.5)
    assert v[2]["effect"]["harmful"]["mean"] == pytest.approx(2.0)      # coherent ones only
    assert v[2]["effect"]["harmful"]["n_questions"] == 10
    assert g["usable_alpha"] == {"set": 0.4, "vector": 0.2}            # 0.5 coherent at 0.4
    r = g["set_against_null"]["harmful"]       # ranked against the set at the largest α
    assert r["draws"] == 4 and r["draws_at_or_above"] == 0 and r["draws_at_or_below"] == 4
    assert r["null_max"] == pytest.approx(14.0)
    c = g["set_against_null_common"]
    assert c["harmful"]["n_questions"] == 10         # coherent in the base, set and every draw
    assert c["harmful"]["effect"] == pytest.approx(20.0)
    assert max(c["harmful"]["null"]) == pytest.approx(14.0)
    assert c["coherent_fraction"] == {"set": 1.0, "null": [1.0, 1.0, 1.0, 0.5],
                                      "draws_at_or_above": 3}
    assert g["nulls"]["null3 a0.4"]["teacher_forced_effect"] == pytest.approx(0.3)
    text = "\n".join(_steering_generation_lines(g))
    assert "+20.0 [" in text and "screened set α ≤ 0.4" in text and "persona vector α ≤ 0.2" in text
    assert text.count("| base (unsteered) |") == 1 and "1 reply per question" in text


@pytest.mark.parametrize("bad, match", [
    ({"steer_generations": -1}, "steer_generations"),
    ({"steer_generations": 1, "generation_null_draws": 21}, "generation_null_draws"),
    ({"steer_generations": 1, "coherence_margin": 0.0}, "coherence_margin"),
    ({"steer_generations": 1, "generation_tokens": 0}, "generation_tokens"),
    ({"steer_generations": 1, "steer_alphas": (0.0,)}, "positive alpha"),
    ({"null_match": "removed"}, "null_match"),
])
def test_generation_settings_are_validated(bad, match):
    from persona_probe.errors import PersonaProbeError
    from persona_probe.experiments.persona_latents import PersonaLatentsConfig

    with pytest.raises(PersonaProbeError, match=match):
        PersonaLatentsConfig(organism={"trait": "evil", "domain": "cooking"},
                             eval_seeds=(1, 2, 3), null_draws=20, tiny=True, **bad)


def test_generation_settings_are_ignored_when_nothing_is_sampled():
    from persona_probe.experiments.persona_latents import PersonaLatentsConfig

    cfg = PersonaLatentsConfig(organism={"trait": "evil", "domain": "cooking"},
                               eval_seeds=(1, 2, 3), null_draws=4, tiny=True)
    assert cfg.steer_generations == 0 and cfg.generation_null_draws > cfg.null_draws


def test_null_options_enter_the_evaluation_fingerprint_only_off_their_defaults():
    """Earlier runs' evaluation stages keep their fingerprints; a changed matching rule or
    draw count is a different stage."""
    from persona_probe.experiments.persona_latents import PersonaLatentsConfig, null_inputs

    def cfg(**kw):
        return PersonaLatentsConfig(organism={"trait": "evil", "domain": "cooking"},
                                    eval_seeds=(1, 2, 3), null_draws=20, tiny=True, **kw)
    assert null_inputs(cfg()) == {"null_draws": 20, "null_seed": 2026,
                                  "null_sets": ["causal screening", "top Δ"]}
    assert null_inputs(cfg(null_match="write"))["null_match"] == "write"
    assert null_inputs(cfg(directional_null=False))["directional_null"] is False
    assert null_inputs(cfg(null_neighbours=20))["null_neighbours"] == 20
    assert null_inputs(cfg(null_seed=1)) != null_inputs(cfg())


def test_null_matching_report_measures_how_well_draws_match():
    """A crosscoder whose first latents write 10x more per unit of activation: random sets
    matched on activation fall short of a chosen set of them on write mass, and the report
    says so; matched on write they come closer, not all the way (deciles are coarse)."""
    import numpy as np
    import torch

    from persona_probe.experiments.persona_latents import null_matching_report
    from persona_probe.latent_dictionaries import CrosscoderDictionary
    from persona_probe.latent_screening import matched_random_sets, null_matching_mass
    from persona_probe.sae.crosscoder import Crosscoder, CrosscoderConfig

    cc = Crosscoder(CrosscoderConfig(d_model=4, d_sae=200, k=2,
                                     hook="blocks.0.hook_resid_post", device="cpu"))
    with torch.no_grad():
        cc.W_dec_F[:5] *= 10.0
    d = CrosscoderDictionary(cc)
    mass = np.linspace(1, 2, 200)
    chosen = [0, 1]                  # low activation, large write mass
    report, drawn = {}, {}
    for match in ("activation", "write"):
        drawn[match] = matched_random_sets(null_matching_mass(d, mass, match), chosen, 50, 0)
        report[match] = null_matching_report(d, mass, {"causal screening": chosen},
                                             {"causal screening": drawn[match]}, match)
    by_act = report["activation"]["causal screening"]
    assert report["activation"]["match"] == "activation" and by_act["write"]["draws"] == 50
    norm = np.where(np.arange(200) < 5, 10.0, 1.0)     # computed apart from the dictionary
    target = float((mass * norm)[chosen].sum())
    assert by_act["write"]["chosen"] == pytest.approx(target, rel=1e-4)
    assert by_act["write"]["null_p95"] < target
    assert by_act["write"]["draws_at_or_above_chosen"] == sum(
        float((mass * norm)[x].sum()) >= target * (1 - 1e-4) for x in drawn["activation"])
    # matching on write mass brings the draws closer, but deciles stay coarse at the top (the
    # top decile here mixes the 10x latents with ordinary ones), which the report makes visible
    by_write = report["write"]["causal screening"]["write"]
    assert by_write["null_median"] > by_act["write"]["null_median"]
    assert by_write["null_median"] < target
