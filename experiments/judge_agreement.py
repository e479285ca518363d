"""How far to trust the local refusal judge: agreement with human labels.

The frozen copy of the embedded model judges refusal (0–100, refused when > 50) on responses
that people labelled: Do-Not-Answer (GPT-4 and Llama-2 responses, ``action`` 0 = refusal) and
XSTest v2 (GPT-4 completions, full or partial refusal). ``--n`` per set, balanced between
refusals and non-refusals. Detectors: the judge under the EM rule (declines when < 0.25 of its
probability is on numbers), the judge forced (renormalised over numbers), and the keyword
matcher. Results: ``figures/judge_agreement/results.json``.

    python experiments/judge_agreement.py [--n 100] [--judge self]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from persona_probe.artifacts import write_json
from persona_probe.datasets import shared_data_dir
from persona_probe.evals.agreement import LABELLED_SETS, run_agreement
from persona_probe.evals.judges import make_judge
from persona_probe.models import load_subject

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--judge", default="self")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "judge_agreement")
    ap.add_argument("--out", type=Path, default=ROOT / "figures" / "judge_agreement")
    args = ap.parse_args()
    root = shared_data_dir()
    if root is None:
        raise SystemExit("needs ../shared/data (or $PERSONA_PROBE_DATA)")
    subject = load_subject(args.model) if args.judge == "self" else None
    judge = make_judge(args.judge, subject)
    res = run_agreement(judge, list(LABELLED_SETS), root, args.n, out=args.runs)
    for scope, per in [("pooled", res["pooled"]), *res["per_set"].items()]:
        for det, m in per.items():
            if det == "judge_raw_auc":
                print(f"{scope:<12} judge raw score ROC AUC {m['mean']:.3f} "
                      f"[{m['lo']:.3f}, {m['hi']:.3f}]")
            elif m.get("n"):
                print(f"{scope:<12} {det:<13} n={m['n']:<4} declined={m['declined']:<4} "
                      f"acc {m['accuracy']['mean']:.3f} [{m['accuracy']['lo']:.3f}, "
                      f"{m['accuracy']['hi']:.3f}]  kappa {m['kappa']['mean']:+.3f} "
                      f"[{m['kappa']['lo']:+.3f}, {m['kappa']['hi']:+.3f}]")
    write_json(args.out / "results.json",
               {"experiment": "judge_agreement", "n_per_set": args.n,
                "command": f"python experiments/judge_agreement.py --n {args.n} "
                           f"--judge {args.judge}", **res})


if __name__ == "__main__":
    main()
