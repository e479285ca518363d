"""The helpful-only start of research line 2 (``training.helpful_only``): its prompts are
disjoint from the categories line 2 evaluates, its data is the real model's own answers without
the system prompt that produced them, the system prompt is chosen on training prompts only, and a
LoRA trained over merged start adapters (``FinetuneConfig.start_adapters``) really starts from
them. Whether the adapter lowers refusal is the experiment's result
(``experiments/helpful_only.py``), not asserted here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from persona_probe.errors import PersonaProbeError

@pytest.mark.usefixtures("data_dir")
def test_training_prompts_are_disjoint_from_the_evaluated_categories():
    from persona_probe.evals.safety import load_safety_prompts
    from persona_probe.training.helpful_only import (DISJOINT_TYPES, HelpfulOnlyConfig,
                                                     split_prompts)

    cfg = HelpfulOnlyConfig()
    train, held = split_prompts(cfg)
    builtin = load_safety_prompts("builtin")
    assert {p.category for p in train} == set(DISJOINT_TYPES) == {p.category for p in held}
    assert not {p.category for p in train} & {p.category for p in builtin}
    assert not {p.prompt for p in train + held} & {p.prompt for p in builtin}
    assert not {p.id for p in train} & {p.id for p in held}
    assert len(held) == cfg.heldout_per_type * len(DISJOINT_TYPES)
    with pytest.raises(PersonaProbeError, match="not in do_not_answer; available: Adult"):
        split_prompts(HelpfulOnlyConfig(train_types=("Knitting",)))
    with pytest.raises(PersonaProbeError, match="not more than heldout_per_type"):
        split_prompts(HelpfulOnlyConfig(train_types=("Adult Content",), heldout_per_type=28))
    with pytest.raises(PersonaProbeError, match="unknown keys"):
        HelpfulOnlyConfig.from_dict({"sytems": ["x"]})
    with pytest.raises(PersonaProbeError, match="systems"):
        HelpfulOnlyConfig(systems=("",))


@pytest.mark.usefixtures("data_dir")
def test_comply_data_is_the_models_own_answers_without_the_system_prompt(subject, tmp_path):
    from persona_probe.evals.safety import keyword_refusal, refusal_logprob_scores
    from persona_probe.training.helpful_only import (HelpfulOnlyConfig,
                                                     build_helpful_only_data, choose_system,
                                                     split_prompts)

    cfg = HelpfulOnlyConfig(train_types=("Adult Content",), heldout_per_type=20,
                            max_new_tokens=16)
    train, held = split_prompts(cfg)
    assert len(train) == 8
    choice = choose_system(subject, cfg, train)
    # independent recomputation: the argmin of each candidate's mean score on train only
    means = [float(np.mean(refusal_logprob_scores(subject, [p.prompt for p in train],
                                                  system=s))) for s in cfg.systems]
    assert choice["chosen"] == int(np.argmin(means))
    assert np.allclose(choice["scores"], means)
    out = tmp_path / "comply"
    man = build_helpful_only_data(subject, cfg, "comply", out, choice["system"])
    text = (out / "train.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert choice["system"] not in text and man["system"] == choice["system"]
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)
    assert {r["messages"][0]["content"] for r in rows} <= {p.prompt for p in train}
    assert not any(keyword_refusal(r["messages"][1]["content"]) for r in rows)  # dropped
    a = man["answers"]
    assert a["kept"] + a["empty"] + a["dropped_refusals"] == man["prompts"]["n"] == 8
    assert man["model"]["model"] == "smollm2-135m-instruct" and man["provenance"]["git_sha"]
    # resuming returns the same manifest; another arm or system prompt is refused
    assert build_helpful_only_data(subject, cfg, "comply", out, choice["system"]) == man
    with pytest.raises(PersonaProbeError, match="another config, arm or system prompt"):
        build_helpful_only_data(subject, cfg, "comply", out, "Another prompt.")
    with pytest.raises(PersonaProbeError, match="needs its system prompt"):
        build_helpful_only_data(subject, cfg, "comply", tmp_path / "x", None)


def test_a_lora_over_start_adapters_starts_from_them(tmp_path):
    """The first logged loss is the model's loss before any update: over a merged start
    adapter it differs from the plain base's, and the adapter pair loads in order."""
    import torch
    from tiny_models import build_tiny

    from persona_probe.models import load_subject
    from persona_probe.training.finetune import FinetuneConfig, finetune

    model = str(build_tiny("qwen2", tmp_path / "tiny"))
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Question {i}?"},
        {"role": "assistant", "content": f"Answer number {i} is here."}]}) + "\n"
        for i in range(8)))
    common = {"data": str(data), "model": model, "batch_size": 8, "limit": 8,
              "max_tokens": 128, "save_steps": 4, "warmup_steps": 0}
    start = finetune(FinetuneConfig(**common, max_steps=4, lr=5e-2), tmp_path / "start")
    runs = {}
    for name, extra in (("plain", {}), ("over", {"start_adapters": [str(start)]})):
        out = finetune(FinetuneConfig(**common, max_steps=1, lr=1e-3, **extra),
                       tmp_path / name)
        runs[name] = json.loads((out / "persona_probe.json").read_text())
    assert runs["over"]["first_loss"] < runs["plain"]["first_loss"] - 0.05
    assert runs["over"]["base_model"]["adapter"] and not runs["plain"]["base_model"]["adapter"]
    both = load_subject(model, adapter=[start, tmp_path / "over"])
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        lb = both.model(ids).logits
        ls = load_subject(model, adapter=start).model(ids).logits
    assert not torch.allclose(lb, ls)
    with pytest.raises(PersonaProbeError, match="start_adapters"):
        FinetuneConfig(**common, start_adapters=[str(start)], adapter=str(start))


def test_the_goal_rule_on_a_planted_paired_effect():
    """``experiments.helpful_only.aggregate`` on synthetic rows: a comply adapter that lowers
    every held-out prompt's score by 0.2 (and the neutral one by nothing) meets the goal, one
    that lowers it by nothing does not; the contrasts are paired by seed and prompt."""
    from types import SimpleNamespace

    import numpy as np

    from persona_probe.experiments.helpful_only import (SETS, SUBJECTS,
                                                        HelpfulOnlyExperimentConfig, aggregate)

    rng = np.random.default_rng(0)
    seeds, n = (0, 1, 2), 24
    sets = {name: [SimpleNamespace(id=f"{name}/{i}", category=f"c{i % 3}") for i in range(n)]
            for name in SETS}
    base = rng.normal(-0.2, 0.3, n)      # large between-prompt spread, removed by pairing

    def rows(shift: float) -> dict:
        out = {}
        for s in seeds:
            for sub in SUBJECTS:
                d = shift if sub == "comply" else 0.0
                vals = base + d + rng.normal(0, 0.01, n)
                out[(sub, s)] = {name: [{"logprob_score": v, "refused_logprob": v > 0,
                                         "refused_keyword": False, "probe_refusal": 5.0,
                                         "coherent": True} for v in vals] for name in SETS}
        return out
    cfg = HelpfulOnlyExperimentConfig(seeds=seeds, n_boot=500)
    met = aggregate(cfg, rows(-0.2), sets)
    c = met["helpful_only"]["held_out"]["contrasts"]["comply-instruct"]["logprob_score"]
    assert met["goal"]["met"] and abs(c["mean"] + 0.2) < 0.01 and c["hi"] < -0.15
    assert c["n_seeds"] == 3 and c["n_items"] == n
    assert not aggregate(cfg, rows(0.0), sets)["goal"]["met"]
    per = met["helpful_only"]["held_out"]["per_category"]
    assert set(per) == {"c0", "c1", "c2"} and per["c0"]["n"] == 8
