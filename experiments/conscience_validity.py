"""Can the conscience tell good from bad? Each conscience reader's validity (AUROC and paired
mean difference over held-out questions) for the base model and an organism as conscience.

The pipeline, its stages and measures: ``persona_probe.experiments.conscience_validity``.

    python experiments/conscience_validity.py                 # CPU config (~10 min)
    python experiments/conscience_validity.py --figures-only  # re-draw from results.json
"""

from pathlib import Path

from persona_probe.experiments import script_main
from persona_probe.experiments.conscience_validity import (ConscienceValidityConfig, draw,
                                                           run)

if __name__ == "__main__":
    script_main(__doc__, ConscienceValidityConfig, run, draw,
                Path(__file__).resolve().parent.parent, "conscience_validity")
