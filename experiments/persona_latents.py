"""Research line 1 to a reviewer's standard: causal screening of SAE latents on a selection
organism, gap removed against matched nulls on evaluation seeds and questions.

The pipeline, its stages and measures: ``persona_probe.experiments.persona_latents``.

    python experiments/persona_latents.py                 # CPU config (~60 min on 2 cores)
    python experiments/persona_latents.py --figures-only  # re-draw from results.json
    python experiments/persona_latents.py --overwrite     # rebuild stages made from other inputs
"""

from pathlib import Path

from persona_probe.experiments import script_main
from persona_probe.experiments.persona_latents import PersonaLatentsConfig, draw, run

if __name__ == "__main__":
    script_main(__doc__, PersonaLatentsConfig, run, draw, Path(__file__).resolve().parent.parent,
                "persona_latents")
