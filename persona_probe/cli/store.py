"""Activation stores: ``capture`` residuals into a store, ``info`` on one, and build an SAE
training ``corpus`` to capture from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from persona_probe.cli import _clean_errors, app


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
    """Capture residual-stream activations into an ActivationStore (under torchrun, items
    are shared across the ranks and merged into one store)."""
    from persona_probe import distributed
    from persona_probe.artifacts import read_json
    from persona_probe.capture import CaptureConfig
    from persona_probe.capture import capture as run_capture
    from persona_probe.models import load_subject
    from persona_probe.prompts import PromptItem, load_prompts

    config = CaptureConfig(hooks=tuple(h.strip() for h in hooks.split(",") if h.strip()),
                           positions=positions, storage_dtype=storage_dtype,
                           batch_size=batch_size, max_tokens=max_tokens,
                           on_overflow=on_overflow, shard_rows=shard_rows)  # type: ignore[arg-type]
    rank = distributed.init_from_env(device)   # under torchrun: one process per GPU (or CPU)
    items = load_prompts(prompts, limit)
    subject = load_subject(model, adapter=adapter, device=distributed.device_for_rank(device),
                           dtype=dtype)
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
                        seed=seed, progress=rank.is_main)
    if not rank.is_main:
        return
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


@app.command()
@_clean_errors
def corpus(recipe: Annotated[Path, typer.Argument(help="Corpus recipe JSON (saes/recipes/…).")],
           out: Annotated[Path, typer.Option(help="JSON-lines file to write.")]) -> None:
    """Mix the recipe's sources into one prompt file for ``capture --prompts``."""
    from persona_probe.corpus import CorpusRecipe, build_corpus, write_corpus

    rec = CorpusRecipe.from_file(recipe)
    items = build_corpus(rec)
    write_corpus(items, out, rec)
    n_open = sum(not it.has_response for it in items)
    typer.echo(f"{len(items)} chats ({n_open} prompt-only, answered at capture with --generate) "
               f"written to {out}")
