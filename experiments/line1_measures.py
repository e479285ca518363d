"""Post-hoc check of line 1's trait measure and organisms (after persona_latents).

    python experiments/line1_measures.py
"""

from pathlib import Path

from persona_probe.experiments import script_main
from persona_probe.experiments.line1_measures import Line1MeasuresConfig, draw, run

if __name__ == "__main__":
    script_main(__doc__, Line1MeasuresConfig, run, draw, Path(__file__).resolve().parent.parent,
                "line1_measures")
