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
from persona_probe.experiments.readme_tables import render_persona_latents

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "configs" / "persona_latents-demo-smollm2-cpu.json"
COMMITTED = ROOT / "figures" / "persona_latents" / "results.json"

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
    print("\n=== LIVE, reduced (this run; one organism seed screened AND evaluated, 10-draw "
          "nulls: a demonstration, no claim) ===\n")
    print(render_persona_latents(live))
    if COMMITTED.is_file():
        print("\n=== COMMITTED, full experiment (figures/persona_latents/results.json: selection "
              "seed 0, evaluation seeds 1-3, 100-draw nulls) ===\n")
        print(render_persona_latents(json.loads(COMMITTED.read_text())))
    print(f"\nlive results: {args.out / 'results.json'}; figures: {args.out}")
