"""Research line 3 end to end: conscience-step DPO vs SFT re-alignment vs none on a shifted model.

The pipeline, its arms and measures: ``persona_probe.experiments.conscience_dpo``.

    python experiments/conscience_dpo.py                          # CPU config, ~20 min
    python experiments/conscience_dpo.py --config experiments/configs/conscience_dpo-qwen2.5-7b-gpu.json
    python experiments/conscience_dpo.py --figures-only           # re-draw from results
"""

from pathlib import Path

from persona_probe.experiments import script_main
from persona_probe.experiments.conscience_dpo import ConscienceExperimentConfig, draw, run

if __name__ == "__main__":
    script_main(__doc__, ConscienceExperimentConfig, run, draw,
                Path(__file__).resolve().parent.parent, "conscience_dpo")
