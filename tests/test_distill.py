"""Constitution-conditioned distillation (``training.distill``) and the shared DPO trainer
(``training.dpo``): the data is the real model's own answers with the constitution as the system
prompt, written without it, beside its unprompted drafts and the preference pairs built from
both; each method (SFT, DPO, the drafts control) takes one step. The training steps run on a
tiny random Qwen2 checkpoint (they test the wiring, not an effect)."""

from __future__ import annotations

import json

import pytest

from persona_probe.errors import PersonaProbeError


@pytest.fixture(scope="module")
def distilled(subject, tmp_path_factory):
    """The real model's data (the recipe's point: its own answers), built once."""
    from persona_probe.training.distill import (ConstitutionDistillConfig,
                                                build_constitution_data)

    root = tmp_path_factory.mktemp("distill")
    cfg = ConstitutionDistillConfig(
        constitution="deontology", regime="narrow", per_category=2, max_new_tokens=12,
        exclude_ids=("harmful_requests/harassment/0",))
    man = build_constitution_data(subject, cfg, root / "data")
    return {"root": root, "cfg": cfg, "manifest": man}


def test_data_is_the_models_answers_without_the_constitution(distilled, subject):
    from persona_probe.training.distill import build_constitution_data, constitution_system

    man, root, cfg = distilled["manifest"], distilled["root"] / "data", distilled["cfg"]
    system = constitution_system("deontology")
    assert man["system"] == system and "duties" in system
    assert man["prompts"]["categories"] == ["harassment", "illegal_behaviour"]
    assert len(man["prompts"]["ids"]) == 4
    assert "harmful_requests/harassment/0" not in man["prompts"]["ids"]
    answers = {}
    for arm in ("constitution", "drafts"):
        text = (root / arm / "train.jsonl").read_text()
        assert system not in text
        rows = [json.loads(line) for line in text.splitlines()]
        assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
        assert len(rows) == man["arms"][arm]["dataset"]["n"] >= 1
        answers[arm] = {r["id"]: r["messages"][1]["content"] for r in rows}
    pairs = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)
    for p in pairs:     # chosen: the constitution's answer; rejected: the draft, same prompt
        assert p["chosen"] == answers["constitution"][p["key"]]
        assert p["rejected"] == answers["drafts"][p["key"]]
    assert man["model"]["model"] == "smollm2-135m-instruct" and man["provenance"]["git_sha"]
    # the same config resumes (a method change does not touch the data); another is refused
    assert build_constitution_data(subject, cfg, root) == man
    import dataclasses
    assert build_constitution_data(subject, dataclasses.replace(cfg, method="dpo"), root) == man
    with pytest.raises(PersonaProbeError, match="another config"):
        build_constitution_data(subject, dataclasses.replace(cfg, constitution="virtue_ethics"),
                                root)
    with pytest.raises(PersonaProbeError, match="answers of the model being trained"):
        build_constitution_data(subject, dataclasses.replace(cfg, model="other"), root)


@pytest.fixture(scope="module")
def tiny_distill(tmp_path_factory):
    """A tiny random Qwen2 as the model being trained (the steps test wiring, not effects)."""
    from tiny_models import build_tiny

    from persona_probe.models import load_subject
    from persona_probe.training.distill import ConstitutionDistillConfig

    root = tmp_path_factory.mktemp("tiny-distill")
    tiny = str(build_tiny("qwen2", root / "tiny"))
    cfg = ConstitutionDistillConfig(
        regime="narrow", per_category=2, max_new_tokens=8, model=tiny,
        finetune={"lr": 1e-3, "batch_size": 2, "max_steps": 1, "max_tokens": 256,
                  "save_steps": 1},
        dpo={"max_steps": 1, "batch_size": 2})
    return {"root": root, "cfg": cfg, "subject": load_subject(tiny)}


@pytest.mark.parametrize("method", ["sft", "dpo", "drafts"])
def test_each_method_takes_a_step_over_the_shared_data(tiny_distill, method):
    import dataclasses

    from persona_probe.training.distill import train_constitution_distillation

    cfg = dataclasses.replace(tiny_distill["cfg"], method=method)
    out = tiny_distill["root"] / "run"             # one directory for every method
    adapter = train_constitution_distillation(cfg, out, subject=tiny_distill["subject"])
    assert adapter == out / f"adapter-{method}" and (adapter / "adapter_config.json").is_file()
    man = json.loads((out / "data" / "manifest.json").read_text())
    rec = json.loads((adapter / "persona_probe.json").read_text())
    if method == "dpo":
        assert rec["steps"] == 1 and rec["pairs"] == man["pairs"]["n"]
        assert rec["pair_loss_before"] == pytest.approx(0.6931, abs=1e-3)  # untrained: log 2
    else:
        arm = "constitution" if method == "sft" else "drafts"
        assert rec["data"]["sha256"] == man["arms"][arm]["dataset"]["sha256"]
        assert rec["steps"] == 1
    # a finished adapter is reused only under the same settings
    assert train_constitution_distillation(cfg, out, subject=tiny_distill["subject"]) == adapter
    key = "dpo" if method == "dpo" else "finetune"
    other = dataclasses.replace(cfg, **{key: {**getattr(cfg, key), "lr": 0.5}})
    with pytest.raises(PersonaProbeError, match="differs? in"):
        train_constitution_distillation(other, out, subject=tiny_distill["subject"])


def test_bad_configs_are_refused_before_any_model_loads():
    from persona_probe.training.distill import ConstitutionDistillConfig
    from persona_probe.training.dpo import DPOSettings

    with pytest.raises(PersonaProbeError, match="method 'ppo'; use one of sft, dpo, drafts"):
        ConstitutionDistillConfig(method="ppo")
    with pytest.raises(PersonaProbeError, match="regime"):
        ConstitutionDistillConfig(regime="medium")
    with pytest.raises(PersonaProbeError, match="unknown keys"):
        ConstitutionDistillConfig(dpo={"betta": 0.1})
    with pytest.raises(PersonaProbeError, match="beta and lr"):
        DPOSettings(beta=0)
    with pytest.raises(PersonaProbeError, match="may not set"):
        ConstitutionDistillConfig(finetune={"seed": 3})
