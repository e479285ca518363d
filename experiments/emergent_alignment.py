"""Research line 2 end to end: CAI under four constitutions, narrow vs broad, and projectability.

The pipeline, its stages and measures: ``persona_probe.experiments.emergent_alignment``.

    python experiments/emergent_alignment.py                        # CPU config, ~35 min
    python experiments/emergent_alignment.py --config experiments/configs/emergent_alignment-qwen2.5-7b-gpu.json
    python experiments/emergent_alignment.py --figures-only         # re-draw from results
"""

from pathlib import Path

from persona_probe.experiments import script_main
from persona_probe.experiments.emergent_alignment import EmergentAlignmentConfig, draw, run

if __name__ == "__main__":
    script_main(__doc__, EmergentAlignmentConfig, run, draw, Path(__file__).resolve().parent.parent,
                "emergent_alignment")
