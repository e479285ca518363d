"""Serving: ``serve`` a model behind an OpenAI-compatible API, e.g. as a judge for evals run on
another machine.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from persona_probe.cli import _clean_errors, app
from persona_probe.errors import PersonaProbeError


@app.command()
@_clean_errors
def serve(
    model: Annotated[str, typer.Option(help="Alias, HF id or local checkpoint.")] = (
        "smollm2-135m-instruct"),
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    api_key_env: Annotated[Optional[str], typer.Option(
        help="Require the bearer key held in this environment variable.")] = None,
    device: Annotated[str, typer.Option()] = "auto",
    dtype: Annotated[Optional[str], typer.Option()] = None,
    max_n: Annotated[int, typer.Option(
        min=1, help="Refuse (400) requests asking for more completions (n).")] = 16,
    max_tokens: Annotated[int, typer.Option(
        min=1, help="Refuse (400) requests with a larger max_tokens.")] = 1024,
    max_prompt_tokens: Annotated[Optional[int], typer.Option(
        min=1, help="Refuse (400) longer prompts, in tokens (default: the model's context).")
        ] = None,
    max_body_bytes: Annotated[int, typer.Option(
        min=1, help="Refuse (413, before parsing) larger request bodies.")] = 1 << 20,
) -> None:
    """Serve a model behind an OpenAI-compatible API (for judges on another machine)."""
    import os

    from persona_probe.serve import ServerConfig
    from persona_probe.serve import serve as run_server

    key = None
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            raise PersonaProbeError(f"--api-key-env {api_key_env}: that variable is not set")
    typer.echo(f"serving {model} at http://{host}:{port}/v1", err=True)
    config = ServerConfig(max_n=max_n, max_tokens=max_tokens,
                          max_prompt_tokens=max_prompt_tokens, max_body_bytes=max_body_bytes)
    run_server(model, host, port, key, device, dtype, config)
