"""What the early-warning monitor's actions buy, and which persona statistics move: a drift
profile (persona vectors of six traits, line 1's screened SAE latents and random latents) under
one family-wise rule, and the stop and steer-on-alarm actions measured by the final trait
measure against the same seed's un-stopped run.

The pipeline, its stages and measures: ``persona_probe.experiments.monitor_actions``.

    python experiments/monitor_actions.py                 # CPU config
    python experiments/monitor_actions.py --figures-only  # re-draw from results.json
    python experiments/monitor_actions.py --overwrite     # rebuild stages made from other inputs
"""

from pathlib import Path

from persona_probe.experiments import script_main
from persona_probe.experiments.monitor_actions import MonitorActionsConfig, draw, run

if __name__ == "__main__":
    script_main(__doc__, MonitorActionsConfig, run, draw, Path(__file__).resolve().parent.parent,
                "monitor_actions")
