"""A helpful-only start for research line 2: the instruct model's own answers under a
comply-with-everything system prompt, distilled without it, against a neutral-answers control;
refusal on held-out categories, trained categories and XSTest's safe prompts, over 3 seeds.

The pipeline, its stages and measures: ``persona_probe.experiments.helpful_only``.

    python experiments/helpful_only.py                 # CPU config (~55 min on 2 cores)
    python experiments/helpful_only.py --figures-only  # re-draw from results.json
"""

from pathlib import Path

from persona_probe.experiments import script_main
from persona_probe.experiments.helpful_only import HelpfulOnlyExperimentConfig, draw, run

if __name__ == "__main__":
    script_main(__doc__, HelpfulOnlyExperimentConfig, run, draw,
                Path(__file__).resolve().parent.parent, "helpful_only")
