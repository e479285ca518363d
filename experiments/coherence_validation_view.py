"""Draw the validation set for the coherence rule from a behaviour_validation run's own
generations (the α range the experiment uses, which the fitting set did not cover), and write
the blind view a labeller reads: question and reply only, shuffled, numbered.

    python experiments/coherence_validation_view.py --runs runs/behaviour_validation \
        --out runs/coherence-val

Writes ``OUT/key.jsonl`` (n, condition, seed, question index, the rule's verdict: never shown
to the labeller) and ``OUT/blind.jsonl`` (n, question, reply). The labels come back as
``OUT/blind_labels.jsonl`` ({n, coherent, note}) and are merged into
``persona_probe/data/coherence/validation_labels.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

CONDITIONS = ("plain", "system evil", "organism treatment",
              "steer evil L15 a0.05", "steer evil L15 a0.1", "steer evil L15 a0.2",
              "steer evil L20 a0.1", "steer evil L20 a0.2",
              "steer random L15 a0.1", "steer random L15 a0.2")
PER_CONDITION = 12


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/behaviour_validation"))
    ap.add_argument("--out", type=Path, default=Path("runs/coherence-val"))
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    from persona_probe.traits import trait_questions

    qs = trait_questions("evaluation")
    pool: dict[str, list[dict]] = {c: [] for c in CONDITIONS}
    for d in sorted(args.runs.glob("generations-seed*")):
        seed = int(d.name.removeprefix("generations-seed"))
        for line in (d / "values.jsonl").read_text().splitlines():
            rec = json.loads(line)
            cond = rec["key"].removesuffix("/rows")
            if cond in pool:
                for i, row in enumerate(rec["value"]):
                    pool[cond].append({"condition": cond, "seed": seed, "question_index": i,
                                       "question": qs[i], "reply": row["reply"],
                                       "rule_coherent": row["coherent"]})
    rng = random.Random(args.seed)
    rows = [r for c in CONDITIONS for r in rng.sample(pool[c], PER_CONDITION)]
    rng.shuffle(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "key.jsonl", "w") as k, open(args.out / "blind.jsonl", "w") as b:
        for n, r in enumerate(rows):
            k.write(json.dumps({"n": n, **{x: r[x] for x in ("condition", "seed",
                                                            "question_index", "rule_coherent")}})
                    + "\n")
            b.write(json.dumps({"n": n, "question": r["question"], "reply": r["reply"]}) + "\n")
    print(f"{len(rows)} rows -> {args.out}/blind.jsonl (key: {args.out}/key.jsonl)")


if __name__ == "__main__":
    main()
