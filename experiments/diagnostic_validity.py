"""Can the ethical persona diagnostic see all four ethics? Under each constitution as a system
prompt, the intended dimension's shift minus the others' (vs no system prompt), on two
independent statement sets.

The pipeline, its stages and measures: ``persona_probe.experiments.diagnostic_validity``.

    python experiments/diagnostic_validity.py                 # CPU config (~5 min)
    python experiments/diagnostic_validity.py --figures-only  # re-draw from results.json
"""

from pathlib import Path

from persona_probe.experiments import script_main
from persona_probe.experiments.diagnostic_validity import (DiagnosticValidityConfig, draw,
                                                           run)

if __name__ == "__main__":
    script_main(__doc__, DiagnosticValidityConfig, run, draw,
                Path(__file__).resolve().parent.parent, "diagnostic_validity")
