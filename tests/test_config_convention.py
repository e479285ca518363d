"""One config convention: every value check lives in ``__post_init__``, so a config built in
Python is refused exactly as the same values read from a file (the file's error names it)."""

from __future__ import annotations

import pytest

from persona_probe.errors import PersonaProbeError
from persona_probe.experiments.early_warning import EarlyWarningConfig
from persona_probe.experiments.emergent_alignment import EmergentAlignmentConfig
from persona_probe.experiments.persona_latents import PersonaLatentsConfig
from persona_probe.experiments.poisoning_dose import PoisoningDoseConfig
from persona_probe.training.finetune import FinetuneConfig
from persona_probe.training.induce import InductionConfig
from persona_probe.training.organism import OrganismConfig

CASES = [
    (FinetuneConfig, {"data": "x.jsonl", "method": "qlora"}, "use 'lora' or 'full'"),
    (FinetuneConfig, {"data": "x.jsonl", "max_steps": 0}, "max_steps"),
    (OrganismConfig, {"keep_fraction": 0}, "keep_fraction"),
    (OrganismConfig, {"domain": "knitting"}, "knitting"),
    (InductionConfig, {"kind": "rlhf"}, "use 'organism' or 'em'"),
    (InductionConfig, {"kind": "em"}, "one finetune config per arm"),
    (EarlyWarningConfig, {"seeds": [1, 1]}, "distinct"),
    (EarlyWarningConfig, {"induce": {"kind": "rlhf"}}, "induce: kind"),
    (EmergentAlignmentConfig, {"regimes": ["wide"]}, "narrow and/or broad"),
    (EmergentAlignmentConfig, {"finetune": {"data": "x"}}, "may not set 'data'"),
    (PersonaLatentsConfig, {"null_draws": 5}, ">= 100"),
    (PoisoningDoseConfig, {"doses": [0.5, 1.0]}, "start at 0.0"),
]


@pytest.mark.parametrize("cls, bad, match", CASES, ids=[f"{c.__name__}-{m[:12]}"
                                                       for c, _, m in CASES])
def test_direct_construction_and_files_are_refused_alike(cls, bad, match):
    with pytest.raises(PersonaProbeError, match=match):
        cls(**bad)
    with pytest.raises(PersonaProbeError, match=match) as exc:
        cls.from_dict(bad, "my.json")
    assert str(exc.value).startswith("my.json: ")       # the file's error names the file
