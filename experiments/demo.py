"""`make demo`: a reduced live run of research line 1's causal screening on the embedded model,
printed beside the committed table of the full experiment, each labelled as what it is.

    python experiments/demo.py [--runs runs/demo] [--out runs/demo/figures]
"""

import argparse
import json
from pathlib import Path

from persona_probe.configs import read_json_config
from persona_probe.errors import PersonaProbeError
from persona_probe.experiments.persona_latents import PersonaLatentsConfig, run
from persona_probe.experiments.readme_tables import render_persona_latents, rendered

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "configs" / "persona_latents-demo-smollm2-cpu.json"
COMMITTED = ROOT / "figures" / "persona_latents" / "results.json"

def describe(res: dict) -> str:
    """What a results file was made from, read from the file itself."""
    cfg = res["config"]
    return (f"selection seed {res['seeds']['selection']}, evaluation seeds "
            f"{', '.join(map(str, res['seeds']['evaluation']))}, split {cfg['split']}, "
            f"ranked by {cfg['screening'].get('rank_by', 'gap_removed')}, "
            f"{cfg['null_draws']}-draw nulls")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "demo")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo" / "figures")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    try:
        cfg = PersonaLatentsConfig.from_dict(read_json_config(CONFIG, "demo config"))
        live = run(cfg, args.runs, args.out, str(CONFIG.relative_to(ROOT)), args.overwrite)
    except PersonaProbeError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"\n=== LIVE, reduced (this run; one organism seed screened AND evaluated, "
          f"{describe(live)}: a demonstration, no claim) ===\n")
    print(render_persona_latents(live))
    if COMMITTED.is_file():
        full = json.loads(COMMITTED.read_text())
        print(f"\n=== COMMITTED, full experiment (figures/persona_latents/results.json: "
              f"{describe(full)}) ===\n")
        print(render_persona_latents(full))
        print("\n=== COMMITTED, every full line-1 run side by side (each run's primary row, "
              "read from its own results.json) ===\n")
        print(rendered("line1_summary", ROOT))
    print(f"\nlive results: {args.out / 'results.json'}; figures: {args.out}")
