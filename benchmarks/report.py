"""Render benchmarks/results/*.json into BENCHMARKS.md tables (numbers are never typed by hand).

Run: .venv/bin/python benchmarks/report.py  (after benchmarks/capture.py)
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent
LIMITS = {"fixed": "hf_stopped", "chat_mix": "hf_stopped_bucketed"}


def capture_section(report: dict) -> str:
    lines = [f"## Capture (`{report['command']}`)", "",
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
                  "| tokens | rows stored | RSS after model load (MiB) | peak RSS (MiB) |",
                  "|---:|---:|---:|---:|"]
        for m in report["memory"]:
            lines.append(f"| {m['tokens']} | {m['rows']} | {m['rss_after_load_mib']:.0f} | "
                         f"{m['peak_rss_mib']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parts = ["# Benchmarks", "",
             "Ratios measured side by side in one run (methods interleaved round by round). "
             "Regenerate with the command in each section, then `python benchmarks/report.py`.",
             ""]
    capture = ROOT / "results" / "capture.json"
    if capture.is_file():
        parts.append(capture_section(json.loads(capture.read_text())))
    (ROOT.parent / "BENCHMARKS.md").write_text("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
