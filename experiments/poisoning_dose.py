"""The early-warning monitor against a poisoning dose: neutral finetunes (the false-alarm
control) and finetunes with 5-100% trait-distilled answers, each watched by the monitor and a
behavioural measure under one evidence rule; AUROC, false alarms, detection doses, lead time.

The pipeline, its stages and measures: ``persona_probe.experiments.poisoning_dose``.

    python experiments/poisoning_dose.py                 # CPU config
    python experiments/poisoning_dose.py --figures-only  # re-draw from results.json
    python experiments/poisoning_dose.py --overwrite     # rebuild stages made from other inputs
"""

from pathlib import Path

from persona_probe.experiments import script_main
from persona_probe.experiments.poisoning_dose import PoisoningDoseConfig, draw, run

if __name__ == "__main__":
    script_main(__doc__, PoisoningDoseConfig, run, draw, Path(__file__).resolve().parent.parent,
                "poisoning_dose")
