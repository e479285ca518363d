"""Early warning over seeds: the monitor's alarm against a behavioural measure, both arms.

The pipeline, its stages and measures: ``persona_probe.experiments.early_warning``.

    python experiments/early_warning.py                       # CPU config, ~20 min
    python experiments/early_warning.py --figures-only
"""

from pathlib import Path

from persona_probe.experiments import script_main
from persona_probe.experiments.early_warning import EarlyWarningConfig, draw, run

if __name__ == "__main__":
    script_main(__doc__, EarlyWarningConfig, run, draw, Path(__file__).resolve().parent.parent,
                "early_warning")
