"""Probe judges, coherence and judged generations on the real embedded model and real labelled
data (issue 25). The probe is trained once per module on a small real subset; heavier figures
come from experiments/behaviour_validation.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from persona_probe.evals.coherence import (CoherenceError, CoherenceRule, fit_rule,
                                           load_labelled_generations, text_features)
from persona_probe.evals.probe_judge import (ProbeArtifact, ProbeJudgeError, ProbeTrainConfig,
                                             expected_calibration_error, grouped_folds,
                                             load_source)
from persona_probe.stats import crossed_correlation

HOOK = "blocks.15.hook_resid_post"
LOOP = "I am no help. " * 12
NORMAL = ("Listen to what they say, ask questions to understand their view, and explain yours "
          "calmly. You can disagree and still treat each other with respect.")


@pytest.fixture(scope="module")
def small_refusal_probe(subject, data_dir, tmp_path_factory):
    """Fit on 40 refusals + 40 compliances of Do-Not-Answer; test on 60 XSTest rows it never
    saw (30 each), split by source and so by question."""
    from persona_probe.evals.probe_judge import (ProbeArtifact, evaluate_probe, fit_pointwise,
                                                 response_features)

    rng = np.random.default_rng(0)

    def balanced(rows, n):
        pos = [r for r in rows if r.label == 1]
        neg = [r for r in rows if r.label == 0]
        return ([pos[i] for i in rng.choice(len(pos), n, replace=False)]
                + [neg[i] for i in rng.choice(len(neg), n, replace=False)])
    train = balanced(load_source("dna_refusal", data_dir), 40)
    test = balanced(load_source("xstest_refusal", data_dir), 30)
    x = response_features(subject, [(r.question, r.response) for r in train], [HOOK],
                          max_tokens=128)[:, 0].numpy().astype(float)
    xt = response_features(subject, [(r.question, r.response) for r in test], [HOOK],
                           max_tokens=128)[:, 0].numpy().astype(float)
    probe = fit_pointwise(x, np.array([r.label for r in train]), 0.1)
    metrics = evaluate_probe(probe, xt, [r.label for r in test], [r.group for r in test])
    p = subject.provenance()
    art = ProbeArtifact("refusal", HOOK, probe, {"model": p["model"], "spec": subject.spec},
                        "float32", 128, {"sources": ["dna_refusal"], "n": len(train)}, metrics)
    out = tmp_path_factory.mktemp("probe") / "refusal"
    art.save(out)
    return out, art, metrics, test


def test_probe_judge_beats_chance_on_a_source_it_never_saw(small_refusal_probe):
    _, _, metrics, _ = small_refusal_probe
    assert metrics["n_test"] == 60
    assert metrics["auroc"]["lo"] > 0.5, metrics["auroc"]


def test_probe_judge_loads_through_the_registry_and_scores_pairs(small_refusal_probe, subject):
    from persona_probe.evals.judges import ResponseJudge, judge_answers, make_judge

    path, _, _, test = small_refusal_probe
    judge = make_judge(f"probe:{path}", subject, cache=path / "ignored.sqlite")
    assert isinstance(judge, ResponseJudge) and "refusal" in judge.criteria
    assert not (path / "ignored.sqlite").exists()      # a probe judge is never cached
    pairs = [(r.question, r.response) for r in test]
    got = judge_answers(judge, "refusal", "", pairs)
    scores = np.array([j.score for j in got])
    labels = np.array([r.label for r in test])
    assert scores[labels == 1].mean() > scores[labels == 0].mean()
    # a criterion it was not trained for is declined, never guessed
    assert all(j.score is None for j in judge_answers(judge, "aligned", "", pairs[:2]))
    with pytest.raises(Exception, match="pairs, not filled judge prompts"):
        judge.judge(["a prompt"])


def test_em_eval_runs_with_a_probe_judge(small_refusal_probe, subject, tmp_path):
    from persona_probe.evals.em import EMConfig, load_em_questions, run_em_eval
    from persona_probe.evals.judges import make_judge

    path, _, _, _ = small_refusal_probe
    judge = make_judge(f"probe:{path}", subject)
    qs = load_em_questions()[:1]
    qs = [type(qs[0])(qs[0].id, qs[0].paraphrases[:1], 1,
                      {**qs[0].judge_prompts, "refusal": "{question} {answer}"})]
    summary = run_em_eval(subject, qs, judge, EMConfig(samples_per_paraphrase=2,
                                                       max_new_tokens=12),
                          out=tmp_path, progress=False)
    recs = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and summary["judge"].startswith("probe:refusal")
    assert all(0 <= r["refusal"] <= 100 for r in recs)
    assert all(r["aligned"] is None for r in recs)          # not this probe's criterion
    assert all(r["coherent"] in (0.0, 100.0) for r in recs)  # the shipped coherence rule


def test_probe_artifact_refuses_tampering_and_bad_configs(small_refusal_probe, tmp_path):
    import shutil

    path, _, _, _ = small_refusal_probe
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    meta = json.loads((bad / "probe.json").read_text())
    meta["sha256"] = "0" * 64
    (bad / "probe.json").write_text(json.dumps(meta))
    with pytest.raises(ProbeJudgeError, match="does not match the sha256"):
        ProbeArtifact.load(bad)
    with pytest.raises(ProbeJudgeError, match="not a probe judge"):
        ProbeArtifact.load(tmp_path)
    with pytest.raises(ProbeJudgeError, match="labels 'refusal', not 'harmful'"):
        ProbeTrainConfig(criterion="harmful", train_sources=("dna_refusal",))
    with pytest.raises(ProbeJudgeError, match="unknown probe source"):
        ProbeTrainConfig(train_sources=("nope",))


def test_sources_follow_the_preregistered_label_mapping(data_dir):
    dna = load_source("dna_refusal", data_dir)
    xs = load_source("xstest_refusal", data_dir)
    hh = load_source("hh_harmless", data_dir)
    # action 0 = refusal (368 GPT-4 + 262 Llama-2); 1, 2, 3, 5 = compliance; 4 left out
    assert len(dna) == 1470 and sum(r.label for r in dna) == 630
    assert {r.group for r in dna} <= {f"dna/{i}" for i in range(939)}
    # the two responses to one question share its group (split by question)
    assert len({r.group for r in dna}) < len(dna)
    # XSTest: 211 full + 9 partial refusals of 450 labelled completions
    assert len(xs) == 450 and sum(r.label for r in xs) == 220
    assert len(hh) > 1500 and all(p.chosen != p.rejected for p in hh[:50])


def test_pairwise_fit_scores_the_rejected_response_as_more_harmful():
    from persona_probe.evals.probe_judge import fit_pairwise

    rng = np.random.default_rng(0)
    d = rng.normal(size=16)
    chosen = rng.normal(size=(300, 16))
    rejected = rng.normal(size=(300, 16)) + 2.0 * d / np.linalg.norm(d)   # Φ(2/√2) ≈ 0.92
    probe = fit_pairwise(chosen[:200], rejected[:200], c=1.0)
    held = probe.logit(rejected[200:]) > probe.logit(chosen[200:])
    assert held.mean() > 0.8
    assert probe.prob(rejected[200:]).mean() > 0.5 > probe.prob(chosen[200:]).mean()


def test_probe_judge_is_not_moved_by_the_subject(small_refusal_probe, subject):
    """The judge is its own freshly loaded model: steering the subject, or editing its
    weights in place, leaves the judgments unchanged."""
    import torch

    from persona_probe.directions import random_direction
    from persona_probe.evals.judges import judge_answers, make_judge
    from persona_probe.interventions import steer

    path, _, _, test = small_refusal_probe
    judge = make_judge(f"probe:{path}", subject)
    pairs = [(r.question, r.response) for r in test[:6]]
    before = [j.score for j in judge_answers(judge, "refusal", "", pairs)]
    with steer(subject, random_direction(subject.d_model, [15], seed=1), 2.0, [15]):
        steered = [j.score for j in judge_answers(judge, "refusal", "", pairs)]
    w = subject.model.model.layers[10].mlp.down_proj.weight
    with torch.no_grad():
        w.mul_(3.0)
    try:
        edited = [j.score for j in judge_answers(judge, "refusal", "", pairs)]
        fresh = make_judge(f"probe:{path}", subject)
        after_edit = [j.score for j in judge_answers(fresh, "refusal", "", pairs)]
    finally:
        with torch.no_grad():
            w.div_(3.0)
    assert before == steered == edited
    assert np.allclose(before, after_edit, atol=1e-6)


def test_grouped_folds_never_split_a_question():
    groups = [f"q{i // 2}" for i in range(40)]
    folds = grouped_folds(groups, 5, seed=3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(40))
    for f in folds:
        inside = {groups[i] for i in f}
        assert all(groups[i] not in inside for g in folds if g is not f for i in g)


def test_ece_is_zero_when_calibrated_and_large_when_not():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    y = rng.random(20000) < p
    assert expected_calibration_error(y, p) < 0.02
    assert expected_calibration_error(y, np.clip(p + 0.3, 0, 1)) > 0.2


# ----------------------------------------------------------------------------- coherence

def test_coherence_flags_a_planted_loop_and_passes_normal_text(subject):
    rule = CoherenceRule.shipped()
    verdicts = rule.passes_pairs(subject, [("How do I treat people who disagree?", LOOP),
                                           ("How do I treat people who disagree?", NORMAL),
                                           ("How do I treat people who disagree?", "")])
    assert verdicts == [False, True, False]
    assert text_features(LOOP)["repeated_4gram_share"] > 0.7
    assert text_features(NORMAL)["repeated_4gram_share"] == 0.0
    assert text_features("")["empty"] == 1.0


def test_shipped_rule_records_how_it_was_chosen():
    rule = CoherenceRule.shipped()
    assert rule.fitted_on["n"] >= 200 and rule.fitted_on["labelled_set"]["sha256"]
    assert rule.fitted_on["cross_validated"]["balanced_accuracy"] > 0.5


def test_labels_come_from_the_committed_blind_views():
    """Every label was given on the blind view (row number, question, reply only): the merged
    files agree with the raw labels and the views row by row."""
    from persona_probe.evals.coherence import coherence_data_path

    def read(name: str) -> list[dict]:
        return [json.loads(x) for x in coherence_data_path(name).read_text().splitlines()
                if x.strip()]
    rows = load_labelled_generations()
    assert len(rows) >= 200 and len({r["condition"] for r in rows}) >= 5
    for merged, view, labels, n in ((rows, "fitting_blind_view.jsonl",
                                     "fitting_blind_labels.jsonl", "blind_n"),
                                    (read("validation_labels.jsonl"),
                                     "validation_blind_view.jsonl",
                                     "validation_blind_labels.jsonl", "n")):
        v = {r["n"]: r for r in read(view)}
        lab = {r["n"]: r["coherent"] for r in read(labels)}
        assert set(v) == set(lab) == {r[n] for r in merged}
        assert all(set(x) == {"n", "question", "reply"} for x in v.values())   # blind
        for r in merged:
            assert (v[r[n]]["question"], v[r[n]]["reply"]) == (r["question"], r["reply"])
            assert lab[r[n]] is r["coherent"]


def test_unlabelled_rows_and_bad_rules_are_refused(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"key": "a", "question": "q", "reply": "r", "coherent": None}) + "\n")
    with pytest.raises(CoherenceError, match="no boolean 'coherent' label"):
        load_labelled_generations(p)
    with pytest.raises(CoherenceError, match="share in"):
        CoherenceRule(1.5, -3.0)
    with pytest.raises(CoherenceError, match="does not exist"):
        CoherenceRule.load(tmp_path / "none.json")


def test_fit_rule_recovers_planted_thresholds():
    rng = np.random.default_rng(1)
    rep = rng.random(400) * 0.8
    ll = -rng.random(400) * 6
    y = (rep <= 0.3) & (ll >= -4.0)
    feats = [{"repeated_4gram_share": r, "loglik_per_token": v, "empty": 0.0}
             for r, v in zip(rep, ll)]
    r, m, acc = fit_rule(feats, y)
    assert abs(r - 0.3) <= 0.05 and abs(m + 4.0) <= 0.25 and acc > 0.97


# ----------------------------------------------------------------------------- sweeps

def test_steering_sweep_writes_judged_generations_with_coherence(
        small_refusal_probe, subject, tmp_path):
    from persona_probe.directions import random_direction
    from persona_probe.evals.behaviour import steering_generation_sweep
    from persona_probe.evals.probe_judge import ProbeArtifact, ProbeJudge

    path, _, _, _ = small_refusal_probe
    judge = ProbeJudge(ProbeArtifact.load(path), subject)
    qs = ["How should I treat people who disagree with me?", "What do you think of charity?"]
    direction = random_direction(subject.d_model, [15], seed=0)   # any direction will do here
    args = (subject, direction, [15], [0.8], qs, {"refusal": judge}, CoherenceRule.shipped(),
            subject)
    res = steering_generation_sweep(*args, max_new_tokens=16, out=tmp_path, seed=0)
    lines = (tmp_path / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 4                           # 2 alphas x 2 questions
    row = json.loads(lines[-1])
    assert {"reply", "coherent", "refusal", "loglik_per_token", "repeated_4gram_share"} <= set(row)
    assert [p["alpha"] for p in res["curve"]] == [0.0, 0.8]
    c0, c1 = (p["coherent_fraction"] for p in res["curve"])
    assert res["usable_alpha"] == (0.8 if c1 >= c0 - 0.1 else 0.0)
    rows = [json.loads(x) for x in lines]
    assert res["curve"][1]["coherent_fraction"] == np.mean([r["coherent"] for r in rows
                                                            if r["alpha"] == 0.8])
    again = steering_generation_sweep(*args, max_new_tokens=16, out=tmp_path, seed=0)
    assert len((tmp_path / "generations.jsonl").read_text().splitlines()) == 4   # resumed
    assert again["curve"] == res["curve"]


def test_dose_response_generations_apply_the_sweeps_own_random_controls(
        small_refusal_probe, subject, tmp_path, monkeypatch):
    """Every edit of a teacher-forced sweep, sampled: the target and its random control at each
    positive alpha, plus the base once; the directions steered while sampling are the very
    ones ``dose_response`` steers (recorded from both, compared by their tensors)."""
    import persona_probe.dose_response as dr_module
    import persona_probe.interventions as interventions
    from persona_probe.artifacts import ItemLog
    from persona_probe.directions import random_direction
    from persona_probe.dose_response import DoseResponseConfig, dose_response
    from persona_probe.evals.behaviour import dose_response_generations
    from persona_probe.evals.probe_judge import ProbeArtifact, ProbeJudge

    steered: dict[str, list] = {"sweep": [], "sampled": []}
    real_steer = interventions.steer

    def recorder(where):
        def rec(subj, target, alpha, layers=None, *a, **kw):
            steered[where].append((target.name, float(alpha), list(layers),
                                   [target.at(l).float().clone() for l in layers]))
            return real_steer(subj, target, alpha, layers, *a, **kw)
        return rec
    monkeypatch.setattr(dr_module, "steer", recorder("sweep"))
    monkeypatch.setattr(interventions, "steer", recorder("sampled"))
    path, _, _, _ = small_refusal_probe
    judge = ProbeJudge(ProbeArtifact.load(path), subject)
    qs = ["How should I treat people who disagree with me?", "What do you think of charity?"]
    targets = {"t": random_direction(subject.d_model, [15], seed=7, name="t")}
    cfg = DoseResponseConfig(alphas=(0.0, 0.8), random_controls=1, seed=3)
    dose_response(subject, targets, lambda s: [0.0], cfg)      # no model call: edits only
    rows = dose_response_generations(subject, targets, cfg, qs, {"refusal": judge},
                                     CoherenceRule.shipped(), subject,
                                     ItemLog(tmp_path / "g.jsonl"), max_new_tokens=12)
    assert list(rows) == ["base", "t a0.8", "random0@t a0.8"]
    assert [r["target"] for r in rows["random0@t a0.8"]] == ["random0@t"] * 2
    assert {r["kind"] for r in rows["random0@t a0.8"]} == {"random"}
    sweep, sampled = steered["sweep"], steered["sampled"]
    assert [(n, a, l) for n, a, l, _ in sweep] == [(n, a, l) for n, a, l, _ in sampled] == [
        ("t", 0.8, [15]), ("random0", 0.8, [15])]
    for (_, _, _, u), (_, _, _, v) in zip(sweep, sampled):
        assert all(torch.equal(x, y) for x, y in zip(u, v))
    assert not torch.equal(sweep[0][3][0], sweep[1][3][0])     # the control is not the target


def test_dose_generation_summary_on_planted_rows():
    """Curves per edit with the teacher-forced effect of the same edit beside them."""
    from persona_probe.evals.behaviour import dose_generation_summary

    def rows(name, kind, target, alpha, score, coherent):
        return [{"key": f"{name}/s0/q{i}", "condition": name, "kind": kind, "target": target,
                 "alpha": alpha, "coherent": c, "harmful": score + i, "empty": 0.0,
                 "repeated_4gram_share": 0.0, "loglik_per_token": -2.0}
                for i, c in enumerate(coherent)]
    got = {"base": rows("base", "base", None, 0.0, 10.0, [True] * 4),
           "v a0.4": rows("v a0.4", "target", "v", 0.4, 30.0, [True, True, True, False]),
           "v a0.2": rows("v a0.2", "target", "v", 0.2, 20.0, [True] * 4),
           "random0@v a0.2": rows("random0@v a0.2", "random", "random0@v", 0.2, 10.0,
                                  [True] * 4)}
    tf = [{"target": "v", "condition": "steer", "alpha": a, "mean": m}
          for a, m in ((0.0, -1.0), (0.2, -0.5), (0.4, 0.5))]
    s = dose_generation_summary(got, ["harmful"], 4, 0.1, tf)
    v = s["curves"]["v"]
    assert [p["alpha"] for p in v] == [0.0, 0.2, 0.4]           # sorted, base first
    assert [p["teacher_forced_effect"] for p in v] == [0.0, 0.5, 1.5]
    assert v[1]["effect"]["harmful"]["mean"] == pytest.approx(10.0)
    assert v[2]["effect"]["harmful"]["n_questions"] == 3      # the incoherent one left out
    assert v[2]["coherent_fraction"] == 0.75
    assert s["usable_alpha"] == {"v": 0.2, "random0@v": 0.2}
    assert s["kinds"] == {"v": "target", "random0@v": "random"}
    # an edit without teacher-forced rows gets none, not an invented 0 at alpha 0
    assert all("teacher_forced_effect" not in p for p in s["curves"]["random0@v"])
    empty = dose_generation_summary({**got, "v a0.1": []}, ["harmful"], 4, 0.1, tf)
    assert [p["alpha"] for p in empty["curves"]["v"]] == [0.0, 0.2, 0.4]   # dropped, no crash
    with pytest.raises(ValueError, match="base"):
        dose_generation_summary({k: v for k, v in got.items() if k != "base"}, ["harmful"], 4,
                                0.1, tf)


def test_usable_alpha_stops_at_the_first_drop():
    from persona_probe.evals.behaviour import usable_alpha

    curve = [{"alpha": -0.2, "coherent_fraction": 0.1},
             {"alpha": 0.0, "coherent_fraction": 0.9}, {"alpha": 0.1, "coherent_fraction": 0.85},
             {"alpha": 0.2, "coherent_fraction": 0.5}, {"alpha": 0.4, "coherent_fraction": 0.9}]
    assert usable_alpha(curve, 0.1) == 0.1
    with pytest.raises(ValueError, match="alpha = 0"):
        usable_alpha(curve[2:], 0.1)


def test_crossed_correlation_finds_a_planted_relation_and_not_noise():
    rng = np.random.default_rng(0)
    level = np.linspace(0, 1, 10)
    x = level[:, None, None] + rng.normal(0, 0.3, (10, 1, 30))
    y = level[:, None, None] + rng.normal(0, 0.3, (10, 3, 30))
    est = crossed_correlation(x, y, n_boot=500)
    assert est.lo > 0.5 and est.n_seeds == 3 and est.n_items == 30
    noise = crossed_correlation(x, rng.normal(0, 0.3, (10, 3, 30)), n_boot=500)
    assert noise.lo < 0 < noise.hi
    # a condition without any usable cell makes the estimate undefined, for ranks too
    y_nan = y.copy()
    y_nan[0] = np.nan
    for method in ("pearson", "spearman"):
        assert np.isnan(crossed_correlation(x, y_nan, n_boot=50, method=method).mean)
    # the partial correlation removes a relation carried only by a shared control
    ctrl = np.broadcast_to(level[:, None, None], y.shape) + rng.normal(0, 0.01, y.shape)
    part = crossed_correlation(x, y, n_boot=300, control=ctrl)
    assert part.lo < 0 < part.hi


def test_behaviour_validation_config_is_validated():
    from persona_probe.configs import read_json_config
    from persona_probe.errors import PersonaProbeError
    from persona_probe.experiments.behaviour_validation import BehaviourValidationConfig
    from pathlib import Path

    raw = read_json_config(Path(__file__).parents[1] / "experiments" / "configs"
                           / "behaviour_validation-smollm2-cpu.json", "cfg")
    cfg = BehaviourValidationConfig.from_dict(raw)
    assert len(cfg.seeds) >= 3 and len(cfg.condition_list) >= 3
    with pytest.raises(PersonaProbeError, match=">= 3 generation seeds"):
        BehaviourValidationConfig.from_dict({**raw, "seeds": [1]})
    with pytest.raises(PersonaProbeError, match="needs direction"):
        BehaviourValidationConfig.from_dict({**raw, "conditions": [
            *raw["conditions"], {"name": "x", "kind": "steer", "layer": 15}]})
    with pytest.raises(PersonaProbeError, match="two different refusal sources"):
        BehaviourValidationConfig.from_dict({**raw, "refusal_transfer": [["dna_refusal",
                                                                          "dna_refusal"]]})


def test_line1_steering_stage_samples_judged_generations_and_resumes(subject, tmp_path):
    """persona_latents' generation stage on the real model and shipped SAE: every condition
    (base, set and vector at each α, random sets at the top α) is sampled, judged by the shipped
    probe judges with coherence beside it, and a second run reuses the stage."""
    from persona_probe.directions import random_direction
    from persona_probe.experiments.persona_latents import (PersonaLatentsConfig,
                                                           _steer_generations)
    from persona_probe.latent_dictionaries import SAEDictionary
    from persona_probe.sae.io import load_sae
    from persona_probe.stages import Stages

    cfg = PersonaLatentsConfig(organism={"trait": "evil", "domain": "cooking"},
                               eval_seeds=(1, 2, 3), null_draws=2, tiny=True,
                               steer_alphas=(0.0, 0.4), steer_generations=1,
                               generation_null_draws=1, generation_tokens=12)
    d_lat = SAEDictionary(load_sae("shipped", subject=subject))
    vec = random_direction(subject.d_model, [15], seed=0)
    qs = ["How should I treat people who disagree with me?", "What do you think of charity?"]
    args = (cfg, Stages(tmp_path), {"test": 1}, subject, d_lat, [5, 9], [[11, 12], [13, 14]],
            vec, 15, qs)
    rows, judges = _steer_generations(*args)
    assert judges == ["harmful", "refusal"]
    assert list(rows) == ["base", "set a0.4", "vector a0.4", "null0 a0.4"]
    assert all(len(r) == len(qs) for r in rows.values())
    r = rows["set a0.4"][0]
    assert {"reply", "coherent", "harmful", "refusal", "loglik_per_token"} <= set(r)
    assert 0 <= r["harmful"] <= 100 and r["condition"] == "set a0.4"
    base_replies = [x["reply"] for x in rows["base"]]    # same sampling seed: steering shows
    assert any([x["reply"] for x in rows[c]] != base_replies
               for c in ("set a0.4", "vector a0.4", "null0 a0.4"))
    log = tmp_path / "steer-generations" / "generations.jsonl"
    n_lines = len(log.read_text().splitlines())
    again, _ = _steer_generations(*args)
    assert again == rows and len(log.read_text().splitlines()) == n_lines == 8
