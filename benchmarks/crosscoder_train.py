"""Crosscoder training throughput beside the project's TopK SAE step, interleaved in one process
(ISSUE 19, research line 1: model-diffing dictionary).

Methods, all at d_model 576 (the embedded model), d_sae 8·d_model, k 32, batch 4096, float32,
full optimizer steps (Adam, gradient clipping, dead-latent bookkeeping, no latent dead yet):
  topk_sae     persona_probe's ``sae.train.train_step`` with the sparse TopK step (the default
               SAE trainer on CPU) on h_B alone
  crosscoder   ``sae.crosscoder.train_step``: BatchTopK over (h_B, h_F), both decoders
  matmul       one fp32 ``x @ W_enc`` of the crosscoder's encoder shape (4096×1152 @ 1152×D):
               the dense product a crosscoder step cannot avoid; its rate sets each method's
               limit, tokens/s = rate / (2·d_in·D) with d_in = 576 (SAE) or 1152 (crosscoder)
A token is one row position (the crosscoder reads two residuals for it). Rows are random
(Gaussian, norm ≈ √d as both trainers' input scaling gives; h_F = h_B + noise), the same for
both methods; no latent is dead yet, so neither step runs its auxiliary loss. Rounds rotate the
method order; the median step time is reported.

Run: .venv/bin/python benchmarks/crosscoder_train.py [--rounds 5] [--steps 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from persona_probe.sae.config import SAETrainConfig, build_training_sae
from persona_probe.sae.crosscoder import Crosscoder, CrosscoderConfig
from persona_probe.sae.crosscoder import make_optimizer as make_cc_optimizer
from persona_probe.sae.crosscoder import train_step as cc_train_step
from persona_probe.sae.train import make_optimizer, train_step
from timing import interleaved  # benchmarks/timing.py, beside this script

ROOT = Path(__file__).resolve().parent
D_MODEL, WIDTH, K, BATCH = 576, 8 * 576, 32, 4096


def random_pairs(n: int, device: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        hb = torch.randn(BATCH, D_MODEL, generator=g)
        hf = hb + 0.1 * torch.randn(BATCH, D_MODEL, generator=g)
        out.append((hb.to(device), hf.to(device)))
    return out


def make_topk_sae(device: str):
    cfg = SAETrainConfig(store="-", expansion_factor=8, k=K, batch_size=BATCH, lr=3e-4,
                         device=device)
    torch.manual_seed(0)
    sae = build_training_sae(cfg, D_MODEL, {}, device=device)
    opt = make_optimizer(cfg, sae)
    dead = torch.zeros(WIDTH, dtype=torch.bool, device=device)
    sparse = device.startswith("cpu")     # as the trainer's step='auto' picks
    state = {"step": 0}

    def step(pair):
        train_step(sae, opt, pair[0], dead, cfg, state["step"], sparse, {})
        state["step"] += 1
    return step


def make_crosscoder(device: str):
    cfg = CrosscoderConfig(d_model=D_MODEL, d_sae=WIDTH, k=K, batch_size=BATCH, lr=3e-4,
                           steps=10**6, device=device)
    model = Crosscoder(cfg).to(device)
    opt = make_cc_optimizer(cfg, model)
    dead = torch.zeros(WIDTH, dtype=torch.bool, device=device)
    state = {"step": 0}

    def step(pair):
        cc_train_step(model, opt, pair[0], pair[1], dead, state["step"])
        state["step"] += 1
    return step


def make_matmul(device: str):
    w = torch.randn(2 * D_MODEL, WIDTH, device=device)
    return lambda pair: torch.mm(torch.cat(pair, dim=1), w)



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per method per round")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "results/crosscoder_train.json"))
    args = ap.parse_args()
    dev = args.device
    batches = random_pairs(args.steps, dev)
    methods = {"topk_sae": make_topk_sae(dev), "crosscoder": make_crosscoder(dev),
               "matmul": make_matmul(dev)}
    times = interleaved(methods, batches, args.rounds, dev)
    med = {m: statistics.median(t) for m, t in times.items()}
    rate = 2 * BATCH * 2 * D_MODEL * WIDTH / med["matmul"]
    limits = {"topk_sae": rate / (2 * D_MODEL * WIDTH),
              "crosscoder": rate / (2 * 2 * D_MODEL * WIDTH)}
    results = []
    for m in ("topk_sae", "crosscoder"):
        tok = BATCH / med[m]
        results.append({"method": m, "ms_per_step": med[m] * 1e3, "tok_per_s": tok,
                        "x_topk_sae": med["topk_sae"] / med[m], "limit_tok_per_s": limits[m],
                        "fraction_of_limit": tok / limits[m],
                        "rounds_ms": [t * 1e3 for t in times[m]]})
    report = {"command": "python benchmarks/crosscoder_train.py " + " ".join(sys.argv[1:]),
              "device": dev if dev != "cpu" else f"cpu ({os.cpu_count()} cores)",
              "torch_threads": torch.get_num_threads(), "dtype": "float32",
              "shape": {"d_model": D_MODEL, "d_sae": WIDTH, "k": K, "batch": BATCH},
              "matmul_gflops": rate / 1e9, "matmul_rounds_ms": [t * 1e3 for t in times["matmul"]],
              "results": results, "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        print(f"{r['method']:11s} {r['tok_per_s']:8.0f} tok/s  {r['x_topk_sae']:.2f}× TopK SAE  "
              f"{r['fraction_of_limit']:.0%} of its limit ({r['limit_tok_per_s']:.0f} tok/s at "
              f"{rate / 1e9:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
