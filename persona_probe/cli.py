"""Command line: ``persona-probe capture`` and ``persona-probe info``.

Every PersonaProbeError is printed as one line naming the problem and the fix (exit code 2).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

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


@app.command()
@_clean_errors
def capture(
    out: Annotated[Path, typer.Option(help="Store directory to write.")],
    prompts: Annotated[str, typer.Option(
        help="builtin:NAME[,NAME] (everyday, advice, ethical_dilemmas, harmful_requests, code, "
             "all) or a JSON-lines file of {messages} or {prompt, response}.")] = "builtin:all",
    model: Annotated[str, typer.Option(help="Alias, HF id or local checkpoint.")] = (
        "smollm2-135m-instruct"),
    adapter: Annotated[Optional[Path], typer.Option(help="PEFT/LoRA adapter directory.")] = None,
    hooks: Annotated[str, typer.Option(help="Comma-separated hook points.")] = (
        "blocks.15.hook_resid_post"),
    positions: Annotated[str, typer.Option(
        help="all | prompt_last | response | response_mean")] = "response",
    generate: Annotated[int, typer.Option(
        help="Generate this many tokens of the model's own reply for prompt-only items "
             "(0: none).")] = 0,
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N items.")] = None,
    storage_dtype: Annotated[str, typer.Option(help="float16 | bfloat16 | float32")] = "float16",
    dtype: Annotated[Optional[str], typer.Option(
        help="Model dtype (default: float32 on CPU, bfloat16 on CUDA).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    batch_size: Annotated[int, typer.Option()] = 16,
    max_tokens: Annotated[Optional[int], typer.Option(help="Longest chat allowed.")] = None,
    on_overflow: Annotated[str, typer.Option(help="error | truncate")] = "error",
    shard_rows: Annotated[int, typer.Option()] = 16384,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted capture.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.")] = False,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Capture residual-stream activations into an ActivationStore."""
    from persona_probe.artifacts import read_json
    from persona_probe.capture import CaptureConfig
    from persona_probe.capture import capture as run_capture
    from persona_probe.models import load_subject
    from persona_probe.prompts import PromptItem, load_prompts

    config = CaptureConfig(hooks=tuple(h.strip() for h in hooks.split(",") if h.strip()),
                           positions=positions, storage_dtype=storage_dtype,
                           batch_size=batch_size, max_tokens=max_tokens,
                           on_overflow=on_overflow, shard_rows=shard_rows)  # type: ignore[arg-type]
    items = load_prompts(prompts, limit)
    subject = load_subject(model, adapter=adapter, device=device, dtype=dtype)
    if generate:
        saved = out / "chats.json"
        if resume and saved.is_file():  # the replies were generated before the interruption
            items = [PromptItem(r["id"], r["messages"], r["category"], r["subcategory"])
                     for r in read_json(saved)]
        else:
            from persona_probe.generation import generate_responses
            items = generate_responses(subject, [it for it in items if not it.has_response],
                                       max_new_tokens=generate, batch_size=batch_size,
                                       seed=seed) + [it for it in items if it.has_response]
    store = run_capture(subject, items, out, config, resume=resume, overwrite=overwrite,
                        seed=seed)
    typer.echo(store.describe())
    typer.echo(f"\nactivations written to {store.root.resolve()}")


@app.command()
@_clean_errors
def info(store: Annotated[Path, typer.Argument(help="Activation store directory.")],
         verify: Annotated[bool, typer.Option(help="Check every file's sha256.")] = False) -> None:
    """Describe an activation store."""
    from persona_probe.store import ActivationStore

    st = ActivationStore(store, verify="all" if verify else "lazy", allow_incomplete=True)
    typer.echo(st.describe())
    if verify:
        typer.echo("  sha256       all files verified")


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
