"""Behaviour you can see at embedded scale: probe judges, a coherence rule, generation-based
dose-response and the teacher-forced proxies validated against judged generations.

    python experiments/behaviour_validation.py [--config ...] [--runs ...] [--out ...]

Pipeline: persona_probe/experiments/behaviour_validation.py; config fields:
BehaviourValidationConfig there.
"""

from __future__ import annotations

from pathlib import Path

from persona_probe.experiments import script_main
from persona_probe.experiments.behaviour_validation import BehaviourValidationConfig, draw, run

if __name__ == "__main__":
    script_main(__doc__, BehaviourValidationConfig, run, draw, Path(__file__).resolve().parents[1],
                "behaviour_validation")
