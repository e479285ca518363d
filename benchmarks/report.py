"""Render benchmarks/results/*.json into BENCHMARKS.md tables (numbers are never typed by hand).

Run: .venv/bin/python benchmarks/report.py  (after benchmarks/capture.py)
     [--gpu DIR]  (benchmarks/gpu_check.py's JSONs; default benchmarks/results/gpu)
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent
LIMITS = {"fixed": "hf_stopped", "chat_mix": "hf_stopped_bucketed"}


def capture_section(report: dict) -> str:
    command = report.get("throughput_command")
    lines = [f"## Capture (`{command}`)", "",
             f"Device `{report['device']}`, {report['torch_threads']} torch threads; hook "
             "`blocks.15.hook_resid_post`, every real token. Median of the interleaved rounds; "
             "ratio = tokens/s over the early-stopped raw forward on the same batches (the limit).",
             ""]
    for dtype in dict.fromkeys(r["dtype"] for r in report["results"]):
        for dataset, limit in LIMITS.items():
            rows = [r for r in report["results"] if r["dtype"] == dtype and r["dataset"] == dataset]
            if not rows:
                continue
            lim = next(r["tok_per_s"] for r in rows if r["method"] == limit)
            lines += [f"**{dtype}, {dataset}** ({rows[0]['tokens']} tokens)", "",
                      "| method | tokens/s | × limit | rounds (s) |", "|---|---:|---:|---|"]
            for r in rows:
                rounds = ", ".join(f"{t:.1f}" for t in r["times"])
                lines.append(f"| {r['method']} | {r['tok_per_s']:.0f} | "
                             f"{r['tok_per_s'] / lim:.2f} | {rounds} |")
            lines.append("")
            ours = next((r for r in rows if r["method"] == "persona_probe"), None)
            tl = next((r for r in rows if r["method"] in ("tl_cache_naive", "tl_cache")), None)
            if ours and tl:
                lines += [f"persona_probe vs `{tl['method']}`: "
                          f"{ours['tok_per_s'] / tl['tok_per_s']:.2f}×", ""]
    if report.get("memory"):
        lines += ["**Peak memory of a capture process** (fresh process, positions=all, "
                  "fp32 model, fp16 store)", "",
                  "| tokens | rows stored | store on disk (MiB) | RSS after model load (MiB) | "
                  "peak RSS (MiB) |", "|---:|---:|---:|---:|---:|"]
        for m in report["memory"]:
            lines.append(f"| {m['tokens']} | {m['rows']} | {m['store_mib']:.0f} | "
                         f"{m['rss_after_load_mib']:.0f} | "
                         f"{m['peak_rss_mib']:.0f} |")
        a, b = report["memory"][0], report["memory"][-1]
        grow = b["peak_rss_mib"] - a["peak_rss_mib"]
        lines += ["", f"Command: `{report['memory_command']}`. Batches capped at 2048 padded "
                  f"tokens in every run. The largest store is {b['store_mib']:.0f} MiB on disk; peak "
                  f"RSS grew by {grow:+.0f} MiB ({grow / a['peak_rss_mib']:+.0%}) from "
                  f"{a['tokens']} to {b['tokens']} tokens.", ""]
    return "\n".join(lines)


def bf16_note(log: Path) -> str:
    """bf16 on this CPU: the stopped run's single warm-up pass per method, beside fp32's."""
    import re

    warm: dict[tuple[str, str], float] = {}
    for line in log.read_text().splitlines():
        m = re.match(r"\[(\w+)\] fixed warm-up (\w+): ([\d.]+) s", line)
        if m:
            warm[(m[1], m[2])] = float(m[3])
    methods = [me for (dt, me) in warm if dt == "bfloat16"]
    if not methods:
        return ""
    lines = ["**bfloat16 on this CPU** (fixed set, one warm-up pass each, from "
             f"`{log.relative_to(ROOT.parent)}`; the bf16 part of the run was stopped because "
             "one round took ~6 min)", "", "| method | fp32 s | bf16 s | bf16 slowdown |",
             "|---|---:|---:|---:|"]
    for me in methods:
        f32, b16 = warm[("float32", me)], warm[("bfloat16", me)]
        lines.append(f"| {me} | {f32:.1f} | {b16:.1f} | {b16 / f32:.1f}× |")
    return "\n".join(lines + ["", "Plain bf16 inference has no fast matmul path on this CPU; "
                               "capture here runs in float32 (the default on CPU) and stores "
                               "float16. On CUDA the default model dtype is bfloat16.", ""])


def sae_section(report: dict) -> str:
    sh = report["shape"]
    lines = [f"## SAE training (`{report['command'].strip()}`)", "",
             f"Device `{report['device']}`, {report['torch_threads']} torch threads, "
             f"{report['dtype']}; TopK, d_in {sh['d_in']}, d_sae {sh['d_sae']} (8×), k {sh['k']}, "
             f"batch {sh['batch']}, the same real activations (blocks.15.hook_resid_post of the "
             "embedded model) for every method; full optimizer steps (Adam, clipping, "
             "dead-latent bookkeeping). Median of the interleaved rounds.", "",
             f"Limit: the encoder product `x @ W_enc` ({sh['batch']}×{sh['d_in']} @ "
             f"{sh['d_in']}×{sh['d_sae']}), the one dense matmul a TopK step cannot avoid, ran at "
             f"{report['matmul_gflops']:.0f} GFLOP/s (fp32, measured in the same rounds), so no "
             f"TopK step can exceed {report['limit_tok_per_s']:.0f} tokens/s here. "
             "*Dense-equivalent MFU* counts the 6·(2·d_in·d_sae) FLOPs per token of a dense SAE "
             "step against the same rate (sparse steps can exceed 100%)."
             + (f" The same product in bfloat16 ran at {report['matmul_bf16_gflops']:.0f} "
                "GFLOP/s, so fp32 is this CPU's fastest matmul and the limit is the machine's."
                if "matmul_bf16_gflops" in report
                and report["matmul_bf16_gflops"] < report["matmul_gflops"] else ""
                if "matmul_bf16_gflops" not in report else
                f" bfloat16 ran the product at {report.get('matmul_bf16_gflops', 0):.0f} "
                "GFLOP/s, faster than fp32: a bf16 step could beat this limit."), "",
             "| method | ms/step | tokens/s | × sae-lens | × limit | dense-equiv. MFU | "
             "rounds (ms) |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in report["results"]:
        rounds = ", ".join(f"{t:.0f}" for t in r["rounds_ms"])
        lines.append(f"| {r['method']} | {r['ms_per_step']:.0f} | {r['tok_per_s']:.0f} | "
                     f"{r['x_sae_lens']:.2f} | {r['fraction_of_limit']:.0%} | "
                     f"{r['dense_equiv_mfu']:.0%} | {rounds} |")
    lines += ["", "`sae_lens` is sae-lens's `SAETrainer.step`; `pp_reference` is persona_probe's "
              "loop around sae-lens's `training_forward_pass` (the path for BatchTopK, JumpReLU "
              "and standard SAEs); `pp_sparse` is the sparse TopK step (default for TopK on CPU), "
              "checked against sae-lens's loss and gradients in `tests/test_sae.py`.", ""]
    return "\n".join(lines)


def crosscoder_section(report: dict) -> str:
    sh = report["shape"]
    lines = [f"## Crosscoder training (`{report['command'].strip()}`)", "",
             f"Device `{report['device']}`, {report['torch_threads']} torch threads, "
             f"{report['dtype']}; d_model {sh['d_model']}, d_sae {sh['d_sae']}, k {sh['k']}, batch "
             f"{sh['batch']} for both methods, the same random rows, full optimizer steps (Adam, "
             "clipping, dead-latent bookkeeping; no latent is dead yet, so neither step runs "
             "its auxiliary loss). `topk_sae` "
             "is the project's TopK SAE step (`sae.train.train_step`, sparse) on h_B; "
             "`crosscoder` is the BatchTopK crosscoder step (`sae.crosscoder.train_step`) on "
             "(h_B, h_F): its encoder reads 2·d_model, and it decodes into both models. A token "
             "is one row position. Median of the interleaved rounds.", "",
             f"Limit: the crosscoder's encoder product ({sh['batch']}×{2 * sh['d_model']} @ "
             f"{2 * sh['d_model']}×{sh['d_sae']}) ran at {report['matmul_gflops']:.0f} GFLOP/s in "
             "the same rounds; a method's limit is that rate over its encoder FLOPs per token "
             "(2·d_in·d_sae, d_in = d_model for the SAE, 2·d_model for the crosscoder).", "",
             "| method | ms/step | tokens/s | × TopK SAE | limit tokens/s | × limit | "
             "rounds (ms) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in report["results"]:
        rounds = ", ".join(f"{t:.0f}" for t in r["rounds_ms"])
        lines.append(f"| {r['method']} | {r['ms_per_step']:.0f} | {r['tok_per_s']:.0f} | "
                     f"{r['x_topk_sae']:.2f} | {r['limit_tok_per_s']:.0f} | "
                     f"{r['fraction_of_limit']:.0%} | {rounds} |")
    return "\n".join(lines + [""])


def steer_section(report: dict) -> str:
    lines = [f"## Generation with a steering hook (`{report['command'].strip()}`)", "",
             f"Device `{report['device']}`, {report['torch_threads']} torch threads; greedy "
             f"generation of exactly {report['new_tokens']} tokens for {report['prompts']} "
             "built-in prompts in one left-padded batch (KV cache on), with `steer` at α = 0 "
             "(the hook runs and adds a zero vector, so every method generates the same tokens). "
             "Overhead = median over rounds of the per-round ratio to `plain` (methods of a round "
             "run back to back, so the VM's drift cancels).", "",
             "| method | median s | overhead | 95% CI | rounds (s) |", "|---|---:|---:|---|---|"]
    for r in report["results"]:
        rounds = ", ".join(f"{t:.1f}" for t in r["rounds_s"])
        lo, hi = r.get("overhead_ci", [float("nan")] * 2)
        lines.append(f"| {r['method']} | {r['median_s']:.2f} | {r['overhead']:+.1%} | "
                     f"[{lo:+.1%}, {hi:+.1%}] | {rounds} |")
    return "\n".join(lines + [""])


def monitor_section(report: dict) -> str:
    rows = zip(report["plain_s"], report["monitored_s"], report["check_s"])
    lo, hi = report["wall_overhead_ci"]
    lines = [f"## Early-warning monitor overhead (`{report['command'].strip()}`)", "",
             f"Device `{report['device']}`, {report['torch_threads']} torch threads; LoRA "
             f"finetunes of {report['steps']} steps (batch {report['batch_size']}) with and "
             f"without the monitor at its default cadence (every {report['every_n_steps']} "
             f"steps; one persona direction at layer 15, {report['probe_items']} probe items), "
             "run back to back in each round, order alternating. Each run includes the step-0 "
             "check, so this is an upper bound on the steady-state cost.", "",
             "| round | plain s | monitored s | inside checks s | checks / monitored wall |",
             "|---:|---:|---:|---:|---:|"]
    for i, (p, m, c) in enumerate(rows):
        lines.append(f"| {i} | {p:.1f} | {m:.1f} | {c:.2f} | {c / m:.2%} |")
    lines += ["", f"Wall-time overhead, median of per-round ratios: "
              f"**{report['wall_overhead']:+.2%}** (95% CI [{lo:+.2%}, {hi:+.2%}]); time spent "
              f"inside checks: **{report['check_share_median']:.2%}** of the monitored run "
              "(the target is ≤ 2%).", ""]
    n_checks = report["steps"] // report["every_n_steps"] + 1          # step 0 included
    per_check = [c / n_checks for c in report["check_s"]]
    per_step = [m / report["steps"] for m in report["monitored_s"]]
    steady = statistics.median(c / (s * report["every_n_steps"])
                               for c, s in zip(per_check, per_step))
    spread = max(report["plain_s"]) / min(report["plain_s"]) - 1
    lines += [f"The wall-time ratio cannot resolve a 1% effect here: identical plain runs "
              f"differed by {spread:.0%} between rounds (shared 2-core VM), hence its wide CI. "
              f"The time inside checks is measured directly: {n_checks} checks per run, "
              f"{statistics.median(per_check):.2f} s each, so at the steady cadence (one check "
              f"per {report['every_n_steps']} steps) the monitor costs **{steady:.2%}** of "
              "training wall time.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from gpu_report import gpu_section  # benchmarks/gpu_report.py, beside this script

    ap = argparse.ArgumentParser(description="Render BENCHMARKS.md from benchmarks/results.")
    ap.add_argument("--gpu", type=Path, default=ROOT / "results" / "gpu",
                    help="folder of benchmarks/gpu_check.py's JSON files")
    args = ap.parse_args(argv)
    parts = ["# Benchmarks", "",
             "Ratios measured side by side in one run (methods interleaved round by round). "
             "Regenerate with the command in each section, then `python benchmarks/report.py`.",
             ""]
    capture = ROOT / "results" / "capture.json"
    if capture.is_file():
        parts.append(capture_section(json.loads(capture.read_text())))
    log = ROOT / "results" / "capture_run.log"
    if log.is_file():
        parts.append(bf16_note(log))
    steer = ROOT / "results" / "steer_generate.json"
    if steer.is_file():
        parts.append(steer_section(json.loads(steer.read_text())))
    sae = ROOT / "results" / "sae_train.json"
    if sae.is_file():
        parts.append(sae_section(json.loads(sae.read_text())))
    crosscoder = ROOT / "results" / "crosscoder_train.json"
    if crosscoder.is_file():
        parts.append(crosscoder_section(json.loads(crosscoder.read_text())))
    mon = ROOT / "results" / "monitor_overhead.json"
    if mon.is_file():
        parts.append(monitor_section(json.loads(mon.read_text())))
    parts.append(gpu_section(args.gpu))
    (ROOT.parent / "BENCHMARKS.md").write_text("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
