"""The GPU section of BENCHMARKS.md, rendered from benchmarks/gpu_check.py's JSON files.

Only real GPU results are rendered: a file from ``--dry-run`` (CPU, tiny models) or from a
device other than CUDA is never shown as a GPU figure; with none, the section says so.
Called by benchmarks/report.py (``--gpu DIR``, default benchmarks/results/gpu).
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA = "persona_probe.gpu_check/1"
SECTIONS = ("capture", "sae_train", "steer_generate", "lora_step")
TITLES = {"capture": "Capture", "sae_train": "SAE training (TopK)",
          "steer_generate": "Generation with a steering hook", "lora_step": "LoRA step"}
HEADER = "## GPU (`make gpu-check`)"


def is_real(report: dict) -> bool:
    """A section file measured on a CUDA device, not a dry run."""
    env = report.get("env") or {}
    return (report.get("schema") == SCHEMA and report.get("dry_run") is False
            and env.get("dry_run") is False and str(env.get("device", "")).startswith("cuda"))


def load(results: Path) -> dict[str, dict]:
    """The real (non-dry-run, CUDA) section reports under ``results``, by section name."""
    out = {}
    for section in SECTIONS:
        path = results / f"{section}.json"
        if path.is_file():
            rep = json.loads(path.read_text())
            if rep.get("section") == section and is_real(rep):
                out[section] = rep
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: float | None, fmt: str = ".0f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _mem(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def _rounds(xs: list[float], fmt: str = ".0f") -> str:
    return ", ".join(format(x, fmt) for x in xs)


def _not_ok(entry: dict) -> str:
    return f"*{entry['model']}: {entry['status']}* — {entry.get('reason') or 'no reason given'}"


def _capture(rep: dict) -> list[str]:
    lines = ["| model | method | tokens/s | × limit | MFU | peak GiB | rounds (ms) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for e in rep["models"]:
        for r in e["results"]:
            lines.append(f"| {e['model']} | {r['method']} | {r['tok_per_s']:.0f} | "
                         f"{r['x_limit']:.2f} | {_pct(r['mfu'])} | {_mem(r['peak_mem_gib'])} | "
                         f"{_rounds(r['rounds_ms'])} |")
    hooks = sorted({e.get("hook") for e in rep["models"] if e.get("hook")})
    sz = rep["sizes"]
    return lines + ["", f"Random token batches of {sz['batch']}×{sz['seq']}, hook "
                    f"{', '.join(f'`{h}`' for h in hooks)}, every token stored (float16). "
                    "Limit = `hf_stopped`, the raw forward stopped after the hook layer; "
                    "`persona_probe` is the capture core (`_run_batch`) writing an "
                    "ActivationStore."]


def _sae(rep: dict) -> list[str]:
    lines = ["| model | method | ms/step | tokens/s | × sae-lens | × limit | MFU (fp32) | "
             "peak GiB | rounds (ms) |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    notes = []
    for e in rep["models"]:
        for r in e["results"]:
            lines.append(f"| {e['model']} | {r['method']} | {r['ms_per_step']:.1f} | "
                         f"{r['tok_per_s']:.0f} | {_num(r.get('x_sae_lens'), '.2f')} | "
                         f"{r['fraction_of_limit']:.0%} | {_pct(r['mfu'])} | "
                         f"{_mem(r['peak_mem_gib'])} | {_rounds(r['rounds_ms'], '.1f')} |")
        if e.get("shape"):
            sh = e["shape"]
            notes.append(f"{e['model']}: d_in {sh['d_in']}, d_sae {sh['d_sae']}, k {sh['k']}, "
                         f"batch {sh['batch']}; encoder product at "
                         f"{e['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s (fp32), so no TopK step "
                         f"exceeds {e['limit_tok_per_s']:.0f} tokens/s")
    return lines + ["", ("; ".join(notes) + ". " if notes else "") +
                    "MFU counts a dense step's 6·(2·d_in·d_sae) FLOPs per token against the "
                    "device's fp32 peak (SAEs train in float32); `pp_sparse` is the sparse TopK "
                    "step, `pp_reference` persona_probe's loop around sae-lens's "
                    "`training_forward_pass`, `sae_lens` sae-lens's `SAETrainer.step`."]


def _steer(rep: dict) -> list[str]:
    lines = ["| model | method | median s | tokens/s | overhead | MFU | peak GiB | rounds (s) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for e in rep["models"]:
        for r in e["results"]:
            lines.append(f"| {e['model']} | {r['method']} | {r['median_s']:.2f} | "
                         f"{r['tok_per_s']:.0f} | {r['overhead']:+.1%} | {_pct(r['mfu'])} | "
                         f"{_mem(r['peak_mem_gib'])} | {_rounds(r['rounds_s'], '.2f')} |")
    sz = rep["sizes"]
    return lines + ["", f"Greedy generation of exactly {sz['new_tokens']} tokens for "
                    f"{sz['batch']} random {sz['prompt']}-token prompts (KV cache on), `steer` at "
                    "α = 0. Decoding is memory-bound, so its MFU is small by nature."]


def _lora(rep: dict) -> list[str]:
    lines = ["| model | ms/step | tokens/s | MFU | peak GiB | trainable params | rounds (ms) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for e in rep["models"]:
        for r in e["results"]:
            lines.append(f"| {e['model']} | {r['ms_per_step']:.0f} | {r['tok_per_s']:.0f} | "
                         f"{_pct(r['mfu'])} | {_mem(r['peak_mem_gib'])} | "
                         f"{e['lora']['trainable_params']:,} | {_rounds(r['rounds_ms'])} |")
    sz = rep["sizes"]
    return lines + ["", f"Batch {sz['batch']}×{sz['seq']} random tokens; the project's LoRA "
                    "(r 16, α 32, all linear layers), AdamW, clipping at 1.0, bf16 autocast, as "
                    "the finetune's Trainer runs it. MFU counts 2·(2N + 4·L·d_attn·T) per token "
                    "(forward and input gradients; frozen weights get no weight gradients)."]


RENDER = {"capture": _capture, "sae_train": _sae, "steer_generate": _steer, "lora_step": _lora}


def gpu_section(results: Path) -> str:
    reps = load(results)
    if not reps:
        return "\n".join([HEADER, "", "No GPU figures yet: `make gpu-check` has not been run on a "
                          "CUDA device with its results committed under "
                          "`benchmarks/results/gpu/`. The test suite runs the same check in "
                          "`--dry-run` mode on CPU (tiny models, one iteration) so that it "
                          "cannot rot; dry-run outputs are never rendered here.", ""])
    env = next(iter(reps.values()))["env"]
    peak = env.get("peak_flops") or {}
    mm = env.get("measured_matmul_flops") or {}
    peak_txt = (f"peak {peak['bf16'] / 1e12:.0f} TFLOP/s bf16 and {peak['fp32'] / 1e12:.0f} "
                f"fp32 ({peak['part']}, {peak['source']})" if peak.get("bf16")
                else f"no peak known ({peak.get('reason')}), so MFU is n/a")
    mm_txt = (f"; an 8192³ bf16 product measured {mm['bf16_8192'] / 1e12:.0f} TFLOP/s"
              if mm.get("bf16_8192") else "")
    lines = [HEADER, "",
             f"Device `{env.get('device_name')}` ({_num(env.get('total_memory_gib'), '.0f')} "
             f"GiB), torch {env.get('torch')}, transformers {env.get('transformers')}, CUDA "
             f"{env.get('cuda')}, sae-lens {env['packages'].get('sae_lens') or 'absent'}; "
             f"{peak_txt}{mm_txt}. Random-init models built on the GPU in bfloat16 from "
             "SmolLM2-135M's and Qwen2.5-7B's configurations (throughput does not depend on the "
             "weights). MFU = model FLOPs / time / peak, with N the parameters a token "
             "multiplies by (PaLM's convention; formulas in `benchmarks/gpu_check.py`). "
             "Median of interleaved rounds; peak GiB = `torch.cuda.max_memory_allocated`. "
             f"The check took {max(r.get('elapsed_s', 0) for r in reps.values()):.0f} s "
             f"(budget {next(iter(reps.values())).get('budget_s', 'n/a')} s); command: "
             f"`{next(iter(reps.values())).get('command', '').strip()}`.", ""]
    for section in SECTIONS:
        rep = reps.get(section)
        if rep is None:
            continue
        lines += [f"### {TITLES[section]}", ""]
        if any(e["results"] for e in rep["models"]):
            lines += RENDER[section](rep)
        not_ok = [_not_ok(e) + "  " for e in rep["models"] if e["status"] != "ok"]
        lines += ([""] + not_ok if not_ok else []) + [""]
    missing = [TITLES[s] for s in SECTIONS if s not in reps]
    if missing:
        lines += [f"Not measured in this run: {', '.join(missing)}.", ""]
    return "\n".join(lines)
