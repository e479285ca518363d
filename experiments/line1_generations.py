"""What the base model writes under line 1's edits (post hoc): the screened latent set and the
persona vector steered at line 1's alphas, matched random latent sets at the largest alpha, and
the organisms unsteered, judged by the probe judges with coherence beside them.

The pipeline, its conditions and measures: ``persona_probe.experiments.line1_generations``.

    python experiments/line1_generations.py                 # CPU config (~8 min on 2 cores)
    python experiments/line1_generations.py --figures-only  # re-draw from results.json
"""

from pathlib import Path

from persona_probe.experiments import script_main
from persona_probe.experiments.line1_generations import Line1GenerationsConfig, draw, run

if __name__ == "__main__":
    script_main(__doc__, Line1GenerationsConfig, run, draw,
                Path(__file__).resolve().parent.parent, "line1_generations")
