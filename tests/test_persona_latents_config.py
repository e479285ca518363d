"""The line-1 experiment's rules are fixed in its config and checked before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona_probe.configs import read_json_config
from persona_probe.errors import PersonaProbeError
from persona_probe.experiments.persona_latents import PersonaLatentsConfig

CONFIGS = Path(__file__).resolve().parent.parent / "experiments" / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("persona_latents-*.json")))
def test_committed_configs_validate(name):
    cfg = PersonaLatentsConfig.from_dict(read_json_config(CONFIGS / name, name))
    label = "shipped SAE" if cfg.sae == "shipped" else "SAE"
    assert cfg.primary in {f"{label} / causal screening", f"{label} / top Δ"} or \
        cfg.primary.startswith("persona vector / ")
    if not cfg.tiny:
        assert len(cfg.eval_seeds) >= 3 and cfg.selection_seed not in cfg.eval_seeds
        assert cfg.null_draws >= 100


@pytest.mark.parametrize("bad, match", [
    ({"eval_seeds": [0, 1, 2]}, "selection_seed"),
    ({"eval_seeds": [1, 2]}, ">= 3 seeds"),
    ({"null_draws": 20}, ">= 100"),
    ({"steer_alphas": [0.1, 0.2]}, "0.0"),
    ({"vector_edits": ["erase"]}, "vector_edits"),
    ({"screening": {"max_set": 0}}, "max_set"),
    ({"organism": {"domain": "knitting"}}, "knitting"),
    ({"primary": "the best row"}, "names no row"),
])
def test_rules_that_would_break_the_evidence_standard_are_refused(bad, match):
    raw = read_json_config(CONFIGS / "persona_latents-smollm2-cpu.json", "cpu config")
    with pytest.raises(PersonaProbeError, match=match):
        PersonaLatentsConfig.from_dict({**raw, **bad})


def test_a_tiny_run_may_evaluate_on_its_selection_seed_but_says_so():
    raw = read_json_config(CONFIGS / "persona_latents-demo-smollm2-cpu.json", "demo config")
    cfg = PersonaLatentsConfig.from_dict(raw)
    assert cfg.tiny and cfg.eval_seeds == (cfg.selection_seed,)
