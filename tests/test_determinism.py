"""Determinism on CPU: two fresh processes given the same seed and data produce identical
activations, SAE weights, latent rankings, sampled replies and eval numbers
(with their bootstrap CIs). A different seed changes what the seed drives, so the comparison
can fail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

PIPELINE = """
import hashlib, json, sys
import torch
from safetensors.torch import load_file
from persona_probe.capture import CaptureConfig, capture
from persona_probe.generation import generate_responses
from persona_probe.latents import rank_latents, token_activations
from persona_probe.likelihood import trait_measure
from persona_probe.models import load_subject
from persona_probe.prompts import load_prompts
from persona_probe.sae import SAETrainConfig, load_sae, train_sae
from persona_probe.traits import load_trait, trait_questions

out, seed = sys.argv[1], int(sys.argv[2])
torch.manual_seed(1234)   # the pipeline's own seeds must decide, not the global state
subject = load_subject("smollm2-135m-instruct", device="cpu")
digest = lambda t: hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()
res = {}
store = capture(subject, load_prompts("builtin:everyday", 16), out + "/store",
                CaptureConfig(hooks=("blocks.15.hook_resid_post",), positions="all",
                              shard_rows=256), progress=False)
res["store_rows"] = digest(store.all_rows("blocks.15.hook_resid_post"))
cfg = SAETrainConfig(store=out + "/store", hook="blocks.15.hook_resid_post",
                     expansion_factor=2, k=16, batch_size=128, training_tokens=8 * 128,
                     window_rows=512, holdout_fraction=0.1, seed=seed, device="cpu")
train_sae(cfg, out + "/sae", progress=False)
res["sae"] = {k: digest(v) for k, v in
              sorted(load_file(out + "/sae/sae_weights.safetensors").items())}
sae = load_sae("shipped")
rows_a, _ = token_activations(subject, sae, load_prompts("builtin:harmful_requests", 4), "all")
rows_b, _ = token_activations(subject, sae, load_prompts("builtin:everyday", 4), "all")
ranking = rank_latents(sae, rows_a, rows_b)
res["ranking"] = ranking.top(20)
res["ranking_delta"] = digest(ranking.delta_mean)
evil = load_trait("evil")
est = trait_measure(subject, evil, trait_questions("heldout")[:6], seed=seed)
res["would_say"] = [est.mean, est.lo, est.hi]
replies = generate_responses(subject, load_prompts("builtin:advice", 3), max_new_tokens=12,
                             temperature=0.9, seed=seed, progress=False)
res["sampled"] = [it.messages[-1]["content"] for it in replies]
json.dump(res, open(out + "/result.json", "w"))
"""


def _pipeline(out, seed: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(PIPELINE), str(out),
                           str(seed)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "result.json").read_text())


def test_same_seed_same_everything_other_seed_differs(tmp_path):
    a = _pipeline(tmp_path / "a", 0)
    b = _pipeline(tmp_path / "b", 0)
    assert a == b   # byte-identical tensors (sha256), identical rankings, numbers and text
    c = _pipeline(tmp_path / "c", 1)
    # what the seed drives moves: SAE initialisation, bootstrap CI, sampled replies
    assert c["sae"]["W_enc"] != a["sae"]["W_enc"]
    assert c["would_say"][0] == a["would_say"][0] and c["would_say"][1:] != a["would_say"][1:]
    assert c["sampled"] != a["sampled"]
    # what it does not drive stays: the model's activations and the ranking
    assert c["store_rows"] == a["store_rows"] and c["ranking"] == a["ranking"]
