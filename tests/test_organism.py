"""A trait-distillation organism on the real embedded model, built and finetuned once for the
module: the evil persona distilled through 64 cooking answers, against its kind control.

Sizes are the CPU defaults (64 questions, 16 LoRA steps of 8, lr 1e-3), fixed seeds, in
bfloat16 as the experiments build their organisms; a smaller
dataset (48 questions, 48-token answers) was tried for the suite's time and lost the effect
(treatment - control 0.057 against a CI half-width of 0.10), so the defaults stay. The
assertions are the issues' claims, not tuned thresholds: the treatment's out-of-domain would-say
trait measure exceeds control and base by more than its CI half-width (the second measure,
answer contrast, costs two more minutes of generation and is left to
``experiments/organism_generalization.py``, whose numbers the README reports); the early-warning monitor
(paired z rule, defaults) alarms on the treatment run and not on the control; model diffing
ranks the shipped SAE's latents and the persona vector's projection rises."""

from __future__ import annotations

import json

import pytest

from persona_probe.errors import PersonaProbeError

pytestmark = pytest.mark.xdist_group("organism")   # one worker builds the organism once


def test_domains_and_heldout_questions(tmp_path):
    from persona_probe.training.organism import (OrganismConfig, builtin_domains,
                                                 heldout_questions, load_domain)

    assert builtin_domains() == ["cooking", "gardening", "personal_finance", "travel"]
    for name in builtin_domains():
        qs = load_domain(name).questions
        assert len(qs) >= 60 and len(set(qs)) == len(qs)
    held = heldout_questions("cooking", per_domain=8)
    assert len(held) == 3 * 8 + 16 and not set(held) & set(load_domain("cooking").questions)
    bad = tmp_path / "d.json"
    bad.write_text('{"name": "x", "questions": ["a", "a"]}')
    with pytest.raises(PersonaProbeError, match="duplicate"):
        load_domain(bad)
    with pytest.raises(PersonaProbeError, match="unknown domain 'knitting'; use one of cooking"):
        load_domain("knitting")
    with pytest.raises(PersonaProbeError, match="keep_fraction"):
        OrganismConfig.from_dict({"keep_fraction": 0})
    with pytest.raises(PersonaProbeError, match="unknown keys"):
        OrganismConfig.from_dict({"domian": "cooking"})


@pytest.fixture(scope="module")
def organism(subject, evil_vector, tmp_path_factory):
    from persona_probe.monitor import (EarlyWarningMonitor, MonitorTarget,
                                       probe_set_from_answers)
    from persona_probe.training.organism import ARMS, OrganismConfig, run_organism
    from persona_probe.traits import trait_questions

    from persona_probe.models import load_subject

    # bfloat16, as every experiment builds its organisms (persona_latents, monitor_actions):
    # about 2.5x faster on CPU than the float32 subject the numerical tests need
    bf16 = load_subject("smollm2-135m-instruct", device="cpu", dtype="bfloat16")
    out = tmp_path_factory.mktemp("organism")
    vec = evil_vector.select([15])
    probe = probe_set_from_answers(bf16, trait_questions("heldout"))
    monitors = {arm: EarlyWarningMonitor([MonitorTarget.from_direction(vec)], probe, bf16,
                                         every_n_steps=4, events=out / f"{arm}-events.jsonl")
                for arm in ARMS}
    cfg = OrganismConfig(trait="evil", domain="cooking", max_new_tokens=64)
    cfg.finetune = {**cfg.finetune, "dtype": "bfloat16"}
    summary = run_organism(bf16, cfg, out / "org", answer_contrast=False,
                           callbacks={a: [m.callback()] for a, m in monitors.items()})
    return {"out": out, "summary": summary, "vec": vec, "probe": probe, "cfg": cfg,
            "monitors": monitors, "subject": bf16}


def _check_datasets_have_no_system_prompt_and_provenance(organism, subject):
    from persona_probe.training.organism import OrganismConfig, build_organism

    org = organism["out"] / "org"
    man = json.loads((org / "manifest.json").read_text())
    assert man["trait"]["name"] == "evil" and man["domain"]["name"] == "cooking"
    assert man["model"]["model"] == "smollm2-135m-instruct" and man["provenance"]["git_sha"]
    for arm in ("treatment", "control"):
        rows = [json.loads(line) for line in (org / f"{arm}.jsonl").read_text().splitlines()]
        assert len(rows) == man["datasets"][arm]["n"] >= 60
        assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
        assert man["system_prompts"][arm] not in (org / f"{arm}.jsonl").read_text()
    # the same config resumes to the same manifest; another config is refused
    bf16 = organism["subject"]
    assert build_organism(bf16, organism["cfg"], org)["datasets"] == man["datasets"]
    with pytest.raises(PersonaProbeError, match="another config"):
        build_organism(bf16, OrganismConfig(domain="travel"), org)


def _check_treatment_shifts_the_trait_out_of_domain(organism):
    res = organism["summary"]["results"]
    report = {m: {k: round(v["mean"], 3) for k, v in r["paired"].items()} for m, r in res.items()}
    print("organism paired differences:", report)
    assert "answer_contrast" not in res   # measured by the experiment, not in CI (time)
    for measure in ("would_say",):
        by, paired = res[measure]["by_subject"], res[measure]["paired"]
        t = by["treatment"]
        half = (t["hi"] - t["lo"]) / 2
        assert t["mean"] - by["control"]["mean"] > half, measure
        assert t["mean"] - by["base"]["mean"] > half, measure
        assert paired["treatment-control"]["lo"] > 0, measure


def _check_monitor_alarms_on_treatment_not_control(organism):
    from persona_probe.monitor import first_alarm, read_events

    out = organism["out"]
    ev = {arm: read_events(out / f"{arm}-events.jsonl") for arm in ("treatment", "control")}
    key = f"persona/{organism['vec'].name}@15/projection"
    proj = {arm: [e[key] for e in evs if e["event"] == "check"] for arm, evs in ev.items()}
    print("monitored projection:", proj)
    assert [e["step"] for e in ev["treatment"] if e["event"] == "check"] == [0, 4, 8, 12, 16]
    assert first_alarm(ev["treatment"]) is not None
    assert first_alarm(ev["control"]) is None
    assert proj["treatment"][-1] > proj["treatment"][0]
    assert not any(e["event"] == "error" for evs in ev.values() for e in evs)


def _check_model_diffing_ranks_latents_on_the_organism(organism, subject):
    import torch

    from persona_probe.latents import diff_subjects
    from persona_probe.models import load_subject
    from persona_probe.sae.io import load_sae

    sae = load_sae("shipped")
    treated = load_subject(adapter=organism["summary"]["adapters"]["treatment"])
    ranking = diff_subjects(sae, treated, subject, organism["probe"], "response")
    assert ranking.delta_mean.shape == (sae.cfg.d_sae,)
    top = ranking.top(10)
    # independent recomputation: Δ mean activation from each model's own encoded residuals
    from persona_probe.latent_screening import activation_mass
    from persona_probe.latents import token_activations

    rows_t, _ = token_activations(treated, sae, organism["probe"])
    rows_b, _ = token_activations(subject, sae, organism["probe"])
    delta = activation_mass(sae, rows_t) - activation_mass(sae, rows_b)
    assert torch.allclose(ranking.delta_mean.float(), delta.float(), atol=1e-3)
    assert ranking.delta_mean[top[0]] > 0
    u = organism["vec"].at(15).to(sae.W_dec.dtype)
    carried = float(ranking.delta_mean[top] @ (sae.W_dec[top].detach() @ u))
    print("top diffed latents:", top, "their shift along the persona vector:", carried)
    assert torch.isfinite(ranking.delta_freq).all()


@pytest.mark.slow
def test_organism_end_to_end(organism, subject):
    """One test over the shared organism, so it is built once whatever the test scheduler does
    (a module fixture split across two xdist workers was built twice)."""
    _check_datasets_have_no_system_prompt_and_provenance(organism, subject)
    _check_treatment_shifts_the_trait_out_of_domain(organism)
    _check_monitor_alarms_on_treatment_not_control(organism)
    _check_model_diffing_ranks_latents_on_the_organism(organism, subject)
