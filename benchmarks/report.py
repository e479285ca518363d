"""Render benchmarks/results/*.json into BENCHMARKS.md tables (numbers are never typed by hand).

Run: .venv/bin/python benchmarks/report.py  (after benchmarks/capture.py)
"""

from __future__ import annotations

import json
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


def main() -> None:
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
    (ROOT.parent / "BENCHMARKS.md").write_text("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
