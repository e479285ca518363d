"""Commands: ``fields`` (every field of a config, its default and what it means, read from the
config class itself)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from persona_probe.cli import _clean_errors, app
from persona_probe.errors import PersonaProbeError

#: The configs a user writes by hand (``--config`` / ``--set`` of the CLI), by the name
#: ``persona-probe fields NAME`` takes; imported lazily (``module:Class``). Every field of each
#: is documented in its class (tests/test_config_convention.py checks it). They live here,
#: at the top, because the CLI is the one layer that may name every other.
CONFIG_CLASSES: dict[str, str] = {
    "finetune": "persona_probe.training.finetune:FinetuneConfig",
    "organism": "persona_probe.training.organism:OrganismConfig",
    "cai": "persona_probe.training.cai:CAIConfig",
    "dpo": "persona_probe.training.conscience:ConscienceDPOConfig",
    "screening": "persona_probe.latent_screening:ScreeningConfig",
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
        help="finetune | organism | cai | dpo | screening (none: list them)")] = None) -> None:
    """The fields of a config (what --config files and --set take), with defaults and docs."""
    from persona_probe.configs import config_reference

    if name is None:
        for key, where in CONFIG_CLASSES.items():
            typer.echo(f"{key:<10} {where.replace(':', '.')}")
        return
    cls = config_class(name)
    typer.echo(f"{cls.__name__} ({cls.__module__}):")
    for line in config_reference(cls).splitlines():
        typer.echo(f"  {line}")
