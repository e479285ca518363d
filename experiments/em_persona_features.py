"""Research line 1 end to end: induce a persona shift, diff SAE latents, steer, ablate, re-align.

The pipeline, its stages and measures: ``persona_probe.experiments.em_persona_features``.

    python experiments/em_persona_features.py                        # CPU config, ~15 min
    python experiments/em_persona_features.py --config experiments/configs/em_persona_features-qwen2.5-7b-gpu.json
    python experiments/em_persona_features.py --figures-only         # re-draw from results
"""

from pathlib import Path

from persona_probe.experiments import script_main
from persona_probe.experiments.em_persona_features import EMPersonaFeaturesConfig, draw, run

if __name__ == "__main__":
    script_main(__doc__, EMPersonaFeaturesConfig, run, draw, Path(__file__).resolve().parent.parent,
                "em_persona_features")
