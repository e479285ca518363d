"""Command line: the ``persona-probe`` app, split by command group.

This module creates ``app`` and the helpers several groups share, then imports the group modules,
each of which registers its commands on ``app``:

- ``store``: capture, info, corpus
- ``saes``: train-sae, sae-metrics, sae-info, import-sae, rank-latents, dashboards,
  screen-latents
- ``directions``: vector, import-vector, export-vector, steer
- ``training``: finetune, screen, cai, dpo, organism
- ``evals``: the ``eval`` sub-app (em, persona, diagnostic, safety, projectability,
  agreement) and train-probe-judge
- ``serving``: serve
- ``configs``: fields (a config's fields, defaults and docs)

A command parses its options, calls library functions and prints; logic a library user would
want lives in the library. Every PersonaProbeError is printed as one line naming the problem and
the fix (exit code 2).
"""

from __future__ import annotations

import functools
import sys

import typer

from persona_probe.errors import PersonaProbeError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Persona features in language models: capture, SAEs, directions, evals.")


def _clean_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PersonaProbeError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None
    return wrapper


def _overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs; values parse as JSON where they can (numbers, true, lists)."""
    import json

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise PersonaProbeError(f"--set {pair!r}: write key=value, e.g. --set lr=1e-3")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _show_check(report: dict) -> None:
    if report["kind"] == "sae":
        typer.echo(f"checked on {report['model']} at {report['hook']}: explained variance "
                   f"{report['explained_variance']:.3f}, L0 {report['l0']:.1f} over "
                   f"{report['rows']} residuals")
    else:
        layers = report["layers"]
        typer.echo(f"checked on {report['model']}: layers {', '.join(layers)} in range, "
                   f"width {report['d_model']}, finite projections of {report['rows']} residuals")


# The groups register their commands on ``app`` when imported, so they come after the helpers.
from persona_probe.cli import (configs, directions, evals, saes, serving, store,  # noqa: E402
                               training)
from persona_probe.cli.training import _dataclass_config  # noqa: E402  (tests import it here)

#: ``--help`` lists the commands in this order (the one they had before the split), whatever
#: order the group modules register them in; a command missing here goes last.
COMMAND_ORDER = (
    "capture", "info", "corpus", "train-sae", "sae-metrics", "sae-info", "vector",
    "import-vector", "export-vector", "import-sae", "rank-latents", "dashboards",
    "screen-latents", "steer", "train-probe-judge", "serve", "finetune", "screen", "cai", "dpo",
    "organism", "fields")


def _position(command) -> int:
    name = command.name or command.callback.__name__.lower().replace("_", "-")  # typer's rule
    return COMMAND_ORDER.index(name) if name in COMMAND_ORDER else len(COMMAND_ORDER)


app.registered_commands.sort(key=_position)
eval_app = evals.eval_app
app.add_typer(eval_app, name="eval")

__all__ = ["COMMAND_ORDER", "app", "configs", "directions", "eval_app", "evals", "main", "saes",
           "serving", "store", "training", "_dataclass_config"]


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())
