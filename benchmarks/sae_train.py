"""SAE training throughput, methods interleaved in one process (ISSUE: SAE).

Methods, all on the same real activations (blocks.15.hook_resid_post of the embedded model,
scaled to mean norm √d as both trainers do), TopK, width 8·d_model, k = 32, batch 4096, Adam,
gradient clipping, dead-latent bookkeeping:
  sae_lens            sae-lens's own ``SAETrainer.step`` (its training step and optimizer)
  pp_reference        persona_probe's ``train_step`` with sae-lens's training_forward_pass
  pp_sparse           persona_probe's ``train_step`` with the sparse TopK step (the default)
  matmul_bf16         the same product in bfloat16, to check that fp32 is this machine's
                      fastest matmul (a limit measured only in fp32 might not be)
  matmul              one fp32 ``x @ W_enc`` of the step's shape: the dense product any TopK
                      SAE step must compute. Its rate is the machine's fp32 matmul throughput
                      and sets the limit: limit tokens/s = rate / (2·d·D).
Rounds rotate the method order; the median step time per method is reported.

Run: .venv/bin/python benchmarks/sae_train.py [--rounds 5] [--steps 4] [--device cpu] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from persona_probe.sae.config import SAETrainConfig, build_training_sae  # noqa: E402
from persona_probe.sae.train import make_optimizer, train_step  # noqa: E402
from persona_probe.store import ActivationStore  # noqa: E402
from timing import interleaved  # noqa: E402  (benchmarks/timing.py, beside this script)

ROOT = Path(__file__).resolve().parent
HOOK = "blocks.15.hook_resid_post"
D_IN, WIDTH, K, BATCH = 576, 8 * 576, 32, 4096


def real_batches(store_path: Path, n: int, device: str) -> list[torch.Tensor]:
    if not (store_path / "meta.json").is_file():
        raise SystemExit(f"error: no activation store at {store_path}; run `make bench-sae` "
                         "(it captures a small one) or `make shipped-sae` (~45 min)")
    store = ActivationStore(store_path)
    if store.n_rows < n * BATCH:
        raise SystemExit(f"error: {store_path} holds {store.n_rows} rows; {n} steps of {BATCH} "
                         "need more (capture more chats, or pass --steps)")
    rows = np.sort(np.random.default_rng(0).choice(store.n_rows, n * BATCH, replace=False))
    x = store.rows(HOOK, rows).float()
    x = x * (D_IN ** 0.5 / x.norm(dim=-1).mean())
    x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))]
    return [b.to(device) for b in x.split(BATCH)]


def make_sae_lens(device: str):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=WIDTH, k=K, device=device))
    cfg = SAETrainerConfig(total_training_samples=10**9, train_batch_size_samples=BATCH,
                           lr=3e-4, lr_end=3e-4, device=device)
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))
    return lambda x: trainer.step(x)


def make_ours(device: str, sparse: bool):
    cfg = SAETrainConfig(store="-", expansion_factor=8, k=K, batch_size=BATCH, lr=3e-4,
                         device=device)
    torch.manual_seed(0)
    sae = build_training_sae(cfg, D_IN, {}, device=device)
    opt = make_optimizer(cfg, sae)
    dead = torch.zeros(WIDTH, dtype=torch.bool, device=device)
    state = {"step": 0}

    def step(x):
        train_step(sae, opt, x, dead, cfg, state["step"], sparse, {})
        state["step"] += 1
    return step


def make_matmul(device: str, dtype: torch.dtype = torch.float32):
    w = torch.randn(D_IN, WIDTH, device=device, dtype=dtype)
    return lambda x: torch.mm(x.to(dtype), w)



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per method per round")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--store", default=str(ROOT.parent / "runs/sae-l15/store"))
    ap.add_argument("--out", default=str(ROOT / "results/sae_train.json"))
    args = ap.parse_args()
    dev = args.device
    batches = real_batches(Path(args.store), args.steps, dev)
    methods = {"sae_lens": make_sae_lens(dev), "pp_reference": make_ours(dev, sparse=False),
               "pp_sparse": make_ours(dev, sparse=True), "matmul": make_matmul(dev),
               "matmul_bf16": make_matmul(dev, torch.bfloat16)}
    times = interleaved(methods, batches, args.rounds, dev)
    med = {m: statistics.median(t) for m, t in times.items()}
    flops_enc = 2 * BATCH * D_IN * WIDTH
    rate = flops_enc / med["matmul"]
    limit_tok = rate / (2 * D_IN * WIDTH)
    results = []
    for m in ("sae_lens", "pp_reference", "pp_sparse"):
        tok = BATCH / med[m]
        results.append({"method": m, "ms_per_step": med[m] * 1e3, "tok_per_s": tok,
                        "x_sae_lens": med["sae_lens"] / med[m], "fraction_of_limit": tok / limit_tok,
                        "dense_equiv_mfu": tok * 6 * 2 * D_IN * WIDTH / rate,
                        "rounds_ms": [t * 1e3 for t in times[m]]})
    report = {"command": "python benchmarks/sae_train.py " + " ".join(sys.argv[1:]),
              "device": dev if dev != "cpu" else f"cpu ({os.cpu_count()} cores)",
              "torch_threads": torch.get_num_threads(), "dtype": "float32",
              "shape": {"d_in": D_IN, "d_sae": WIDTH, "k": K, "batch": BATCH},
              "matmul_gflops": rate / 1e9, "limit_tok_per_s": limit_tok,
              "matmul_rounds_ms": [t * 1e3 for t in times["matmul"]], "results": results,
              "matmul_bf16_gflops": flops_enc / med["matmul_bf16"] / 1e9,
              "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        print(f"{r['method']:13s} {r['tok_per_s']:8.0f} tok/s  {r['x_sae_lens']:.2f}× sae-lens  "
              f"{r['fraction_of_limit']:.0%} of the limit ({limit_tok:.0f} tok/s at "
              f"{rate / 1e9:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
