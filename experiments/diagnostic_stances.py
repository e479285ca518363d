"""Does the ethical persona diagnostic separate real stances on the embedded model?

The embedded model is measured under a system prompt that adopts a strict deontological stance
and under one that adopts a consequentialist stance (the team's trait prompts), plus no stance.
Both scoring modes, on the team's statements (44 per dimension) and on the Anthropic persona
statements mapped to deontology and consequentialism (``--anthropic-limit`` per file).
Reported: each profile with its bootstrap CI, and the paired difference between the two stances
(same statements resampled in both). Results: ``figures/diagnostic_stances/results.json``.

    python experiments/diagnostic_stances.py [--anthropic-limit 200] [--runs runs/diagnostic]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from persona_probe.artifacts import write_json
from persona_probe.evals.diagnostic import Context, compare_contexts, run_diagnostic
from persona_probe.evals.records import read_items
from persona_probe.models import load_subject
from persona_probe.provenance import provenance
from persona_probe.traits import load_trait

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--anthropic-limit", type=int, default=200)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "diagnostic")
    ap.add_argument("--out", type=Path, default=ROOT / "figures" / "diagnostic_stances")
    args = ap.parse_args()
    subject = load_subject(args.model)
    stances = ["deontology", "consequentialism"]
    contexts = [Context("neutral")] + [
        Context(f"stance:{s}", system=load_trait(s).trait_system[0]) for s in stances]
    runs = [("team", "would_say", ["deontology", "consequentialism", "virtue_ethics",
                                   "human_authority"], contexts),
            ("team", "probability", ["deontology", "consequentialism", "virtue_ethics",
                                     "human_authority"], contexts),
            ("anthropic", "would_say", stances, contexts[1:])]
    results = {}
    for source, mode, dims, ctxs in runs:
        out = args.runs / f"{source}-{mode}"
        s = run_diagnostic(subject, dims, ctxs, mode, source, args.anthropic_limit, out)
        recs = [r for r in read_items(out / "items.jsonl") if r["mode"] == mode]
        paired = compare_contexts(recs, "stance:deontology", "stance:consequentialism")
        results[f"{source}/{mode}"] = {
            "profiles": s["profiles"],
            "deontology_minus_consequentialism_stance": {d: e.to_dict()
                                                         for d, e in paired.items()}}
        print(f"== {source} / {mode}")
        for ctx, prof in s["profiles"].items():
            print(f"  {ctx:<26}" + "  ".join(f"{d[:6]} {e['mean']:+.3f} [{e['lo']:+.3f},"
                                              f"{e['hi']:+.3f}]" for d, e in prof.items()))
        for d, e in paired.items():
            print(f"  paired deon-stance − cons-stance  {d:<18} {e}")
    write_json(args.out / "results.json",
               {"experiment": "diagnostic_stances", "model": subject.provenance(),
                "anthropic_limit": args.anthropic_limit,
                "command": "python experiments/diagnostic_stances.py "
                           f"--anthropic-limit {args.anthropic_limit}",
                "results": results, "provenance": provenance(0)})


if __name__ == "__main__":
    main()
