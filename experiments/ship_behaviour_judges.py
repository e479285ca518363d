"""Copy the probe judges and the coherence rule of a finished behaviour_validation run into the
package data (``persona_probe/data/judges/``, ``persona_probe/data/coherence/rule.json``), so
``probe:refusal``, ``probe:harmful`` and ``CoherenceRule.shipped()`` are what that run fitted.

    python experiments/ship_behaviour_judges.py [--runs runs/behaviour_validation]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from persona_probe.artifacts import read_json
from persona_probe.evals.coherence import CoherenceRule, coherence_data_path
from persona_probe.evals.probe_judge import ProbeArtifact, shipped_probe_dir


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=root / "runs" / "behaviour_validation")
    args = ap.parse_args()
    for stage in ("probe-judge", "coherence-rule"):
        if not (args.runs / stage / "stage.json").is_file():
            raise SystemExit(f"error: {args.runs / stage} is not a finished stage; run "
                             "experiments/behaviour_validation.py first")
    for crit in ("refusal", "harmful"):
        src = args.runs / "probe-judge" / "probes" / crit
        ProbeArtifact.load(src)                       # checks format and sha256
        dst = shipped_probe_dir(crit)
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
        print(f"{src} -> {dst}")
    rule = CoherenceRule.load(args.runs / "coherence-rule" / "rule.json")
    dst = coherence_data_path("rule.json")
    rule.save(dst)
    stage = read_json(args.runs / "coherence-rule" / "stage.json")
    print(f"coherence rule (stage at {stage.get('git_sha')}) -> {dst}")


if __name__ == "__main__":
    main()
