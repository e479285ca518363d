"""Commands: ``fields`` (every field of a config, its default and what it means, read from the
config class itself)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from persona_probe.cli import _clean_errors, app
from persona_probe.errors import PersonaProbeError

#: The configs a user writes by hand (``--config`` / ``--set`` of the CLI, JSON recipes, or the
#: dataclasses the Python API takes), by the name ``persona-probe fields NAME`` takes; imported
#: lazily (``module:Class``). Every field of each is documented in its class
#: (tests/test_config_convention.py checks it). They live here, at the top, because the CLI is
#: the one layer that may name every other. Experiment configs are documented the same way but
#: not listed: each experiment's script and its config files in experiments/configs/ show them.
CONFIG_CLASSES: dict[str, str] = {
    "finetune": "persona_probe.training.finetune:FinetuneConfig",
    "organism": "persona_probe.training.organism:OrganismConfig",
    "cai": "persona_probe.training.cai:CAIConfig",
    "helpful-only": "persona_probe.training.helpful_only:HelpfulOnlyConfig",
    "dpo": "persona_probe.training.conscience:ConscienceDPOConfig",
    "induce": "persona_probe.training.induce:InductionConfig",
    "screening": "persona_probe.latent_screening:ScreeningConfig",
    "capture": "persona_probe.capture:CaptureConfig",
    "corpus": "persona_probe.corpus:CorpusRecipe",
    "corpus-source": "persona_probe.corpus:CorpusSource",
    "sae": "persona_probe.sae.config:SAETrainConfig",
    "crosscoder": "persona_probe.sae.crosscoder:CrosscoderConfig",
    "dose-response": "persona_probe.dose_response:DoseResponseConfig",
    "probe-judge": "persona_probe.evals.probe_judge:ProbeTrainConfig",
    "em": "persona_probe.evals.em:EMConfig",
    "safety": "persona_probe.evals.safety:SafetyConfig",
    "monitor-zscore": "persona_probe.monitor:ZScoreRule",
    "monitor-threshold": "persona_probe.monitor:ThresholdRule",
    "monitor-trend": "persona_probe.monitor:TrendRule",
    "monitor-steer": "persona_probe.monitor:SteerAction",
    "serve": "persona_probe.serve:ServerConfig",
}


def config_class(name: str) -> type:
    """The config class registered under ``name`` in ``CONFIG_CLASSES``."""
    import importlib

    if name not in CONFIG_CLASSES:
        raise PersonaProbeError(f"no config named {name!r}; use one of "
                                f"{', '.join(CONFIG_CLASSES)}")
    module, cls = CONFIG_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls)


@app.command()
@_clean_errors
def fields(name: Annotated[Optional[str], typer.Argument(
        help=" | ".join(CONFIG_CLASSES) + " (none: list them)")] = None) -> None:
    """The fields of a config (what --config files, --set and the Python API take), with
    defaults and docs."""
    from persona_probe.configs import config_reference

    if name is None:
        width = max(map(len, CONFIG_CLASSES))
        for key, where in CONFIG_CLASSES.items():
            typer.echo(f"{key:<{width}} {where.replace(':', '.')}")
        return
    cls = config_class(name)
    typer.echo(f"{cls.__name__} ({cls.__module__}):")
    for line in config_reference(cls).splitlines():
        typer.echo(f"  {line}")
