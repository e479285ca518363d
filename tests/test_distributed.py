"""torchrun with gloo on CPU: capture with items sharded over two ranks, and SAE training with
DistributedDataParallel, each compared with the single-process run of the same command.

These test the distribution machinery (sharding, merging, gradient averaging, rank-0 output),
which does not depend on the weights, so they run a tiny random Qwen2-architecture checkpoint
(tests/tiny_models.py): every rank of every command loads a model, and the 135M one made this
module a minute of the suite."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from persona_probe.store import ActivationStore

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed")]

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    from tiny_models import build_tiny

    return str(build_tiny("qwen2", tmp_path_factory.mktemp("tiny-qwen2")))


def _capture(tiny: str) -> list[str]:
    return ["capture", "--prompts", "builtin:everyday", "--limit", "24", "--positions", "all",
            "--shard-rows", "256", "--batch-size", "4", "--device", "cpu", "--model", tiny,
            "--hooks", HOOK]


def _run(args: list[str], ranks: int = 1) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", str(ranks)] if ranks > 1 else [sys.executable])
    proc = subprocess.run([*launcher, "-m", "persona_probe.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def stores(tiny, tmp_path_factory) -> dict[str, ActivationStore]:
    root = tmp_path_factory.mktemp("dist")
    _run([*_capture(tiny), "--out", str(root / "single")])
    out = _run([*_capture(tiny), "--out", str(root / "ddp")], ranks=2)
    assert out.count("activations written to") == 1   # rank 0 reports, once
    return {k: ActivationStore(root / k, verify="all") for k in ("single", "ddp")}


def test_torchrun_capture_equals_single_process(stores, tiny):
    single, ddp = stores["single"], stores["ddp"]
    assert ddp.meta["world_size"] == 2 and "world_size" not in single.meta
    assert ddp.meta["fingerprint"] == single.meta["fingerprint"]
    assert ddp.n_rows == single.n_rows > 500
    # each rank wrote its own shards; the merge is one store with one index, in the
    # single-process row order, with no rank directory left behind
    assert [s.rows for s in ddp.shards] != [s.rows for s in single.shards]
    assert not (ddp.root / "ranks").exists()
    a, b = ddp.index(), single.index()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(ddp.all_rows(HOOK), single.all_rows(HOOK))   # bit-identical rows
    # resuming a finished distributed capture recomputes nothing and changes nothing
    before = json.loads((ddp.root / "progress.json").read_text())
    _run([*_capture(tiny), "--out", str(ddp.root), "--resume"], ranks=2)
    assert json.loads((ddp.root / "progress.json").read_text()) == before


def test_torchrun_sae_training_equals_single_process(stores, tmp_path):
    """Same global batch (256 rows; 128 per rank under DDP), dead latents after 2 steps so the
    TopK auxiliary loss and the ranks' shared dead-latent mask are exercised."""
    # 16 x d_model 64: as many latents as the 135M model's 2 x 576, so some die in 2 steps
    cfg = {"store": str(stores["single"].root), "hook": HOOK, "architecture": "topk",
           "expansion_factor": 16, "k": 16, "training_tokens": 16 * 256, "batch_size": 256,
           "lr": 1e-3, "holdout_fraction": 0.1, "window_rows": 1024, "checkpoint_every": 8,
           "log_every": 4, "dead_feature_window": 2, "seed": 0, "device": "cpu"}
    path = tmp_path / "sae.json"
    path.write_text(json.dumps(cfg))
    from persona_probe.sae import SAETrainConfig, train_sae

    _run(["train-sae", "--config", str(path), "--out", str(tmp_path / "ddp"), "--no-metrics"],
         ranks=2)
    for name, seed in [("single", 0), ("other_seed", 1)]:   # one process: this one
        train_sae(SAETrainConfig.from_dict({**cfg, "seed": seed}), tmp_path / name,
                  progress=False)
    runs = {name: load_file(str(tmp_path / name / "sae_weights.safetensors"))
            for name in ("single", "ddp", "other_seed")}
    for key in ("W_enc", "W_dec", "b_enc", "b_dec"):
        ddp_gap = (runs["ddp"][key] - runs["single"][key]).abs().max().item()
        seed_gap = (runs["other_seed"][key] - runs["single"][key]).abs().max().item()
        # float tolerance: averaging two half-batch gradients reorders float32 sums (~1e-7
        # relative); 16 Adam steps leave the weights ~1e-6 apart, while a different seed
        # moves them by ~1e-2 or more
        assert ddp_gap < 1e-4 and ddp_gap < seed_gap / 100, (key, ddp_gap, seed_gap)
    logs = {k: [json.loads(line) for line in (tmp_path / k / "training_log.jsonl").open()]
            for k in ("single", "ddp")}
    assert [r["dead"] for r in logs["ddp"]] == [r["dead"] for r in logs["single"]]
    assert logs["ddp"][-1]["dead"] > 0 and logs["ddp"][-1]["aux"] > 0
    for a, b in zip(logs["ddp"], logs["single"]):
        assert a["tokens"] == b["tokens"]
        assert abs(a["explained_variance"] - b["explained_variance"]) < 1e-4
    info = json.loads((tmp_path / "ddp" / "persona_probe.json").read_text())
    assert info["steps"] == 16 and info["tokens_seen"] == 16 * 256


def test_balanced_ranges_are_contiguous_and_cover():
    from persona_probe.distributed import balanced_ranges

    for costs, parts in [([5, 1, 1, 1, 1, 1], 2), ([1] * 7, 3), ([3], 4), ([], 2),
                         ([100, 1, 1], 3)]:
        ranges = balanced_ranges(costs, parts)
        assert len(ranges) == parts and ranges[0][0] == 0 and ranges[-1][1] == len(costs)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert balanced_ranges([1] * 8, 2) == [(0, 4), (4, 8)]
    assert balanced_ranges([5, 1, 1, 1, 1, 1], 2) == [(0, 1), (1, 6)]


def test_uneven_batch_over_ranks_is_a_clear_error(stores, tmp_path):
    cfg = {"store": str(stores["single"].root), "hook": HOOK, "expansion_factor": 2, "k": 16,
           "training_tokens": 1000, "batch_size": 255, "device": "cpu"}
    path = tmp_path / "sae.json"
    path.write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "persona_probe.cli", "train-sae",
                           "--config", str(path), "--out", str(tmp_path / "x"), "--no-metrics"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "batch_size 255 does not split evenly over 2 ranks" in proc.stderr + proc.stdout
    assert not (tmp_path / "x").exists()   # refused before anything was written


def test_torchrun_finetune_uses_the_trainers_ddp(tiny, tmp_path):
    """LoRA finetuning under torchrun: the Trainer shards the data (2 steps × 2 ranks × 1 chat
    = half an epoch of 8 chats), and rank 0 alone writes one adapter and one result. The chats
    are short ones written here (the tiny model's context is 512 of its own tokens)."""
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Give me tip number {i} for a calm morning."},
        {"role": "assistant", "content": f"Tip {i}: drink water and step outside."}]}) + "\n"
        for i in range(8)))
    out = tmp_path / "ft"
    text = _run(["finetune", "--data", str(data),
                 "--out", str(out), "--set", "limit=8", "--set", "max_steps=2", "--set",
                 "batch_size=1", "--set", "max_tokens=512", "--set", "on_overflow=truncate",
                 "--set", "device=cpu", "--set", f"model={tiny}"], ranks=2)
    assert text.count("2 steps, loss") == 1
    meta = json.loads((out / "persona_probe.json").read_text())
    assert meta["world_size"] == 2 and meta["steps"] == 2
    log = [json.loads(line) for line in (out / "training_log.jsonl").open()]
    assert log[-1]["epoch"] == 0.5 and all(math.isfinite(r["loss"]) for r in log[:-1])
    assert (out / "adapter_model.safetensors").is_file() and not (out / "checkpoints").exists()
