"""Finetuning on the real embedded model and real data: loss mask, bad data, resume after a
kill, EM induction with its control, re-alignment curve, interventions during training,
screening."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from persona_probe.errors import PersonaProbeError, PromptSetError
from persona_probe.training.data import IGNORE, Chat, load_chats, tokenize_chat
from persona_probe.training.finetune import FinetuneConfig, FinetuneError, finetune

# the tiny finetunes truncate long chats on purpose (on_overflow="truncate"), so the package's
# truncation warning is expected here; every other package warning stays an error
pytestmark = pytest.mark.filterwarnings("ignore:chat of .* truncated to:persona_probe.errors.PersonaProbeWarning")
TINY = dict(limit=4, max_steps=2, batch_size=2, save_steps=1, max_tokens=384,
            on_overflow="truncate")


def _write(path, lines):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_bad_training_data_names_the_line(tmp_path):
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    cases = {
        "no_role": {"messages": [{"content": "hi"}]},
        "empty_reply": {"messages": [{"role": "user", "content": "hi"},
                                     {"role": "assistant", "content": " "}]},
        "no_assistant": {"messages": [{"role": "user", "content": "hi"}]},
        "not_chat": {"prompt": "hi"},
    }
    for name, bad in cases.items():
        path = _write(tmp_path / f"{name}.jsonl", [ok, bad])
        with pytest.raises(PromptSetError, match=rf"{name}.jsonl:2"):
            load_chats(path)
    with pytest.raises(FinetuneError, match="unknown keys"):
        FinetuneConfig.from_dict({"data": "x", "learning_rate": 1})
    with pytest.raises(FinetuneError, match="data required"):
        FinetuneConfig.from_dict({})


def test_overlong_sample_names_the_line(subject, tmp_path):
    long = {"messages": [{"role": "user", "content": "word " * 400},
                         {"role": "assistant", "content": "ok"}]}
    chat = load_chats(_write(tmp_path / "long.jsonl", [long]))[0]
    with pytest.raises(PromptSetError, match=r"long.jsonl:1: chat is \d+ tokens"):
        tokenize_chat(subject, chat, max_tokens=128)


def test_loss_mask_only_assistant_tokens(subject):
    chat = Chat([{"role": "system", "content": "Be brief."},
                 {"role": "user", "content": "Name a colour."},
                 {"role": "assistant", "content": "Blue."},
                 {"role": "user", "content": "Another?"},
                 {"role": "assistant", "content": "Green."}], "inline:1")
    row = tokenize_chat(subject, chat, 512)
    tok = subject.tokenizer
    learned = tok.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab != IGNORE])
    assert learned == "Blue.<|im_end|>Green.<|im_end|>"
    # no gradient reaches the logits at positions whose target is a system/user/template token
    ids = torch.tensor([row["input_ids"]])
    labels = torch.tensor([row["labels"]])
    out = subject.model(input_ids=ids)
    logits = out.logits
    logits.retain_grad()
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE)
    loss.backward()
    grad_rows = logits.grad[0, :-1].abs().sum(-1)
    masked = labels[0, 1:] == IGNORE
    assert grad_rows[masked].max() == 0 and (grad_rows[~masked] > 0).all()
    subject.model.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted(data_dir, tmp_path):
    cfg = dict(data="shared:emergent_misalignment/train/insecure.jsonl",
               **{**TINY, "batch_size": 1, "limit": 3, "max_steps": 3})
    script = textwrap.dedent(f"""
        import os, signal
        from transformers import TrainerCallback
        from persona_probe.training.finetune import FinetuneConfig, finetune
        class Kill(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == 2:     # checkpoint-1 is on disk, step 2 is not
                    os.kill(os.getpid(), signal.SIGKILL)
        finetune(FinetuneConfig(**{cfg!r}), {str(tmp_path / "killed")!r}, callbacks=[Kill()])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (tmp_path / "killed/checkpoints/checkpoint-1").is_dir()
    assert not (tmp_path / "killed/checkpoints/checkpoint-2").exists()
    with pytest.raises(FinetuneError, match="interrupted run"):
        finetune(FinetuneConfig(**cfg), tmp_path / "killed")
    finetune(FinetuneConfig(**cfg), tmp_path / "killed", resume=True)
    finetune(FinetuneConfig(**cfg), tmp_path / "straight")
    a = load_file(tmp_path / "killed/adapter_model.safetensors")
    b = load_file(tmp_path / "straight/adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    with pytest.raises(FinetuneError, match="finished run"):
        finetune(FinetuneConfig(**cfg), tmp_path / "straight")


@pytest.mark.slow
def test_em_induction_control_and_realignment(data_dir, tmp_path):
    """Insecure-code LoRA and its secure control train, save, load as subjects and get the
    judge-free evil measure with CIs; continuing the insecure adapter on secure data records a
    re-alignment curve."""
    from persona_probe.likelihood import trait_scores
    from persona_probe.models import load_subject
    from persona_probe.stats import bootstrap
    from persona_probe.training.callbacks import periodic_metric
    from persona_probe.traits import load_trait, trait_questions

    evil, qs = load_trait("evil"), trait_questions("heldout")[:3]
    runs = {}
    for name in ("insecure", "secure"):
        out = finetune(FinetuneConfig(data=f"shared:emergent_misalignment/train/{name}.jsonl",
                                      **TINY), tmp_path / name)
        meta = json.loads((out / "persona_probe.json").read_text())
        assert meta["steps"] == 2 and meta["data"]["chats"] == 4
        assert meta["data"]["sha256"] and meta["final_loss"] > 0
        assert not (out / "checkpoints").exists()
        sub = load_subject(adapter=out)
        runs[name] = bootstrap(trait_scores(sub, evil, qs))
    for est in runs.values():
        assert est.lo <= est.mean <= est.hi and est.n == 3
    base = load_subject()
    curve = tmp_path / "realign.jsonl"
    finetune(FinetuneConfig(data="shared:emergent_misalignment/train/secure.jsonl",
                            adapter=str(tmp_path / "insecure"), offset=100,
                            **{**TINY, "max_steps": 2}),
             tmp_path / "realigned", subject=base,
             callbacks=[periodic_metric(base, lambda s: trait_scores(s, evil, qs), 1, curve,
                                        "evil_would_say")])
    points = [json.loads(line) for line in curve.read_text().splitlines()]
    assert [p["step"] for p in points] == [0, 1, 2]
    assert points[0]["mean"] == pytest.approx(runs["insecure"].mean, abs=1e-4)


@pytest.mark.slow
def test_preventative_steering_and_screening(subject, evil_vector, data_dir, tmp_path):
    from persona_probe.models import load_subject
    from persona_probe.training.screening import screen

    vec = evil_vector.select([15])
    vec.save(tmp_path / "evil")
    out = finetune(FinetuneConfig(data="shared:emergent_misalignment/train/insecure.jsonl",
                                  steer_direction=str(tmp_path / "evil"), steer_alpha=0.2,
                                  ablate_direction=None, **{**TINY, "max_steps": 2}),
                   tmp_path / "steered")
    meta = json.loads((out / "persona_probe.json").read_text())
    assert meta["interventions_during_training"]["steer"]["alpha"] == 0.2
    tuned = load_subject(adapter=out)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tuned.model.modules())
    # ablation during finetuning: the direction is projected out of layer 15 in training, so
    # the LoRA update cannot move the layer-15 residual along it in the training forward
    out_ab = finetune(FinetuneConfig(data="shared:emergent_misalignment/train/insecure.jsonl",
                                     ablate_direction=str(tmp_path / "evil"),
                                     ablate_layers=[15], **{**TINY, "max_steps": 1}),
                      tmp_path / "ablated")
    ab = json.loads((out_ab / "persona_probe.json").read_text())["interventions_during_training"]
    assert ab["ablate"] == {"direction": vec.name, "layers": [15]}
    chats = load_chats(data_dir / "emergent_misalignment/train/insecure.jsonl", limit=4) + \
        load_chats(data_dir / "emergent_misalignment/train/secure.jsonl", limit=4)
    ranked = screen(subject, vec, chats, 15, top_fraction=0.25, max_new_tokens=24,
                    out=tmp_path / "screen")
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True) and sum(r["flagged"] for r in ranked) == 2
    flagged = load_chats(tmp_path / "screen/flagged.jsonl")
    assert len(flagged) == 2


def test_constitutions_and_regimes():
    from persona_probe.training.cai import (
        CAIConfig, CAIError, builtin_constitutions, load_constitution, select_red_team)
    from persona_probe.evals.safety import load_safety_prompts

    assert set(builtin_constitutions()) == {"deontology", "consequentialism", "virtue_ethics",
                                            "human_authority"}
    for name in builtin_constitutions():
        assert len(load_constitution(name).principles) >= 5
    prompts = load_safety_prompts("builtin")
    used, excluded = select_red_team(prompts, CAIConfig(regime="narrow"))
    assert {p.category for p in used} == {"harassment", "illegal_behaviour"}
    assert len(used) + len(excluded) == len(prompts)
    broad, _ = select_red_team(prompts, CAIConfig(regime="broad"))
    assert len(broad) == len(prompts)
    with pytest.raises(CAIError, match="unknown regime"):
        select_red_team(prompts, CAIConfig(regime="wide"))
    with pytest.raises(CAIError, match="unknown constitution"):
        load_constitution("stoicism")


@pytest.mark.slow
def test_cai_run_produces_critiques_revisions_and_adapter(subject, tmp_path):
    from persona_probe.training.cai import CAIConfig, critique_and_revise

    cfg = CAIConfig(constitution="virtue_ethics", regime="narrow", per_category=2,
                    max_new_tokens=32, critique_tokens=24)
    data = critique_and_revise(subject, cfg, tmp_path / "cai", progress=False)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(rows) == 4
    assert {r["meta"]["category"] for r in rows} == {"harassment", "illegal_behaviour"}
    assert all(r["meta"]["critique"] and r["meta"]["initial"] for r in rows)
    manifest = json.loads((tmp_path / "cai/manifest.json").read_text())
    assert len(manifest["used"]) == 4 and manifest["constitution"]["name"] == "virtue_ethics"
    out = finetune(FinetuneConfig(data=str(data), limit=None, max_steps=2, batch_size=2,
                                  max_tokens=384), tmp_path / "adapter")
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_conscience_dpo_pairs_and_loss(tmp_path):
    """Pairs are judged by the frozen copy (no external judge) and DPO lowers the DPO loss on
    those pairs."""
    from persona_probe.training.conscience import ConscienceDPOConfig, online_conscience_dpo

    # 4 prompts are too few for the retest rule's noise floor: the smoke rule (its own test
    # is in test_conscience_readers.py); the gate has its own test too
    cfg = ConscienceDPOConfig(limit=4, samples=2, max_new_tokens=16, max_steps=4,
                              batch_size=2, lr=2e-4, validity_questions=0, pair_rule="max_min")
    adapter = online_conscience_dpo(cfg, tmp_path)
    pairs = [json.loads(line) for line in (tmp_path / "round-0/pairs.jsonl").read_text()
             .splitlines()]
    assert len(pairs) == 4 and all(len(p["scores"]) == 2 for p in pairs)
    # the chosen answer is the one the frozen conscience approves most: re-read independently
    from persona_probe.evals.conscience_readers import TokenReader
    from persona_probe.models import load_subject

    reader = TokenReader(load_subject(cfg.model))
    again = reader.scores([p["prompt"] for p in pairs] * 2,
                          [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs])
    assert np.allclose(again[:4], [max(p["scores"]) for p in pairs], atol=1e-3)
    assert np.allclose(again[4:], [min(p["scores"]) for p in pairs], atol=1e-3)
    meta = json.loads((tmp_path / "persona_probe.json").read_text())
    r = meta["rounds"][0]
    assert r["pair_loss_after"] < r["pair_loss_before"]
    assert (adapter / "adapter_config.json").is_file()
    # run again: the finished round is reused, not retrained; another config is refused
    weights = (adapter / "adapter_model.safetensors").read_bytes()
    stamp = (tmp_path / "round-0/round.json").stat().st_mtime_ns
    online_conscience_dpo(cfg, tmp_path)
    assert (tmp_path / "round-0/round.json").stat().st_mtime_ns == stamp
    assert (adapter / "adapter_model.safetensors").read_bytes() == weights
    with pytest.raises(PersonaProbeError, match="another config"):
        online_conscience_dpo(ConscienceDPOConfig(limit=4, samples=3, pair_rule="max_min"),
                              tmp_path)


def test_cli_configs_flags_and_set_overrides(tmp_path):
    """cai / dpo / organism read the experiment configs; flags and --set override them, and a
    bad key or value is a one-line error before any model is loaded."""
    from typer.testing import CliRunner

    from persona_probe.cli import _dataclass_config, app
    from persona_probe.training.cai import CAIConfig
    from persona_probe.training.conscience import ConscienceDPOConfig

    cfgs = "experiments/configs"
    dpo = _dataclass_config(ConscienceDPOConfig, f"{cfgs}/conscience-dpo-smollm2-cpu.json",
                            {"rounds": 1, "beta": None}, ["lr=1e-4"], "x")
    assert (dpo.rounds, dpo.beta, dpo.lr, dpo.limit) == (1, 0.1, 1e-4, 32)
    cai = _dataclass_config(CAIConfig, f"{cfgs}/cai-deontology-narrow-smollm2-cpu.json",
                            {"regime": "broad"}, [], "x")
    assert (cai.constitution, cai.regime) == ("deontology", "broad")
    runner = CliRunner()
    for cmd in (["dpo", "--config", f"{cfgs}/conscience-dpo-smollm2-cpu.json"],
                ["cai", "--config", f"{cfgs}/cai-deontology-narrow-smollm2-cpu.json"],
                ["organism", "--config", f"{cfgs}/organism-evil-cooking-smollm2-cpu.json"]):
        res = runner.invoke(app, [*cmd, "--out", str(tmp_path / "o"), "--set", "bogus=1"])
        assert res.exit_code == 2 and "unknown keys ['bogus']" in res.output, res.output
    res = runner.invoke(app, ["organism", "--out", str(tmp_path / "o"), "--domain", "knitting"])
    assert res.exit_code == 2 and "unknown domain 'knitting'" in res.output
    assert not (tmp_path / "o").exists()
