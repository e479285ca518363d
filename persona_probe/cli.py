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


@app.command("train-sae")
@_clean_errors
def train_sae_cmd(
    config: Annotated[Path, typer.Option(help="SAE training config (JSON, saes/configs/…).")],
    out: Annotated[Path, typer.Option(help="Directory for the trained SAE.")],
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a config key: --set lr=1e-3 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing SAE.")] = False,
    metrics: Annotated[bool, typer.Option(help="Compute held-out metrics at the end.")] = True,
    ce_chats: Annotated[int, typer.Option(help="Held-out chats for the CE/KL metrics.")] = 64,
) -> None:
    """Train an SAE from an activation store, then measure it on held-out chats."""
    from persona_probe.sae import SAETrainConfig, evaluate_sae, format_metrics, train_sae

    cfg = SAETrainConfig.from_file(config, **_overrides(set_ or []))
    path = train_sae(cfg, out, resume=resume, overwrite=overwrite)
    typer.echo(f"SAE written to {path.resolve()}")
    if metrics:
        typer.echo(format_metrics(_measure(path, ce_chats)))


def _measure(path: Path, ce_chats: int, store: Optional[Path] = None) -> dict:
    from persona_probe.artifacts import read_json
    from persona_probe.models import load_subject
    from persona_probe.sae import evaluate_sae

    subject = None
    if ce_chats > 0:
        info = read_json(path / "persona_probe.json") if (path / "persona_probe.json").is_file() \
            else {}
        model = info.get("model", {})
        if not model.get("model"):
            raise PersonaProbeError(f"{path} does not say which model it was trained on; pass "
                                    "--ce-chats 0 to skip the CE/KL metrics")
        subject = load_subject(model["model"], adapter=model.get("adapter"))
    return evaluate_sae(path, store=store, subject=subject, ce_chats=ce_chats)


@app.command("sae-metrics")
@_clean_errors
def sae_metrics_cmd(
    sae: Annotated[Path, typer.Argument(help="SAE directory.")],
    store: Annotated[Optional[Path], typer.Option(
        help="Store to measure on (default: the one it was trained on).")] = None,
    ce_chats: Annotated[int, typer.Option(help="Held-out chats for CE/KL (0: skip).")] = 64,
) -> None:
    """(Re)compute an SAE's held-out metrics and write metrics.json beside it."""
    from persona_probe.sae import format_metrics

    typer.echo(format_metrics(_measure(sae, ce_chats, store)))


@app.command("sae-info")
@_clean_errors
def sae_info_cmd(sae: Annotated[str, typer.Argument(
        help="SAE directory, or sae-lens:RELEASE/SAE_ID")]) -> None:
    """Describe an SAE: architecture, width, hook, model, training data and saved metrics."""
    import json

    from persona_probe.artifacts import read_json
    from persona_probe.sae import format_metrics
    from persona_probe.sae.io import REGISTRY_PREFIX, load_sae, registry_entry

    if sae.startswith(REGISTRY_PREFIX):
        release, sae_id, model = registry_entry(sae)
        typer.echo(f"sae-lens release {release}, SAE {sae_id}, model {model} "
                   "(weights download on first load)")
        return
    path = Path(sae)
    s = load_sae(path)
    c = s.cfg
    typer.echo(f"SAE {path}\n  architecture {c.architecture()}  d_in {c.d_in}  d_sae {c.d_sae}"
               + (f"  k {c.k}" if hasattr(c, "k") else "") + f"  dtype {c.dtype}")
    typer.echo(f"  model {c.metadata.model_name}  hook {c.metadata.hook_name}")
    info_path = path / "persona_probe.json"
    if info_path.is_file():
        info = read_json(info_path)
        typer.echo(f"  trained on {info['tokens_seen']:,} tokens ({info['steps']} steps) from "
                   f"{info['store']}; {info['rows']['heldout']:,} rows held out")
        typer.echo(f"  config {json.dumps(info['config'], sort_keys=True)}")
    if (path / "metrics.json").is_file():
        typer.echo(format_metrics(read_json(path / "metrics.json")))
    else:
        typer.echo("  no metrics.json yet: run `persona-probe sae-metrics " + str(path) + "`")


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
