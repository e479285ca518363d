"""Constitution distillation against its drafts control for research line 2: SFT on the
instruct model's own answers under each of the four constitutions (trained without the system
prompt) against the same SFT on its own unprompted answers to the same prompts, and the
instruct model itself; refusal on held-out categories, trained categories (unseen prompts) and
XSTest's safe prompts, over 3 seeds.

The pipeline, its stages and measures: ``persona_probe.experiments.constitution_distill``.

    python experiments/constitution_distill.py                 # CPU config (~35 min on 2 cores)
    python experiments/constitution_distill.py --dry-run       # validate and list the stages
    python experiments/constitution_distill.py --figures-only  # re-draw from results.json
"""

from pathlib import Path

from persona_probe.experiments import script_main
from persona_probe.experiments.constitution_distill import (ConstitutionDistillExperimentConfig,
                                                            draw, run)

if __name__ == "__main__":
    script_main(__doc__, ConstitutionDistillExperimentConfig, run, draw,
                Path(__file__).resolve().parent.parent, "constitution_distill")
