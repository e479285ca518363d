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
    """Train an SAE from an activation store, then measure it on held-out chats (under torchrun:
    DistributedDataParallel, each rank taking its slice of every batch)."""
    from persona_probe import distributed
    from persona_probe.sae import SAETrainConfig, format_metrics, train_sae

    cfg = SAETrainConfig.from_file(config, **_overrides(set_ or []))
    rank = distributed.init_from_env(cfg.device)   # under torchrun: DDP, one process per device
    path = train_sae(cfg, out, resume=resume, overwrite=overwrite)
    if not rank.is_main:
        return
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
    if info_path.is_file() and "imported" in read_json(info_path):
        imp = read_json(info_path)["imported"]
        typer.echo(f"  imported from {imp['source_format']} {imp['source_path']}\n  layers: "
                   f"{imp['source_layer_mapping']}")
    elif info_path.is_file():
        info = read_json(info_path)
        typer.echo(f"  trained on {info['tokens_seen']:,} tokens ({info['steps']} steps) from "
                   f"{info['store']}; {info['rows']['heldout']:,} rows held out")
        typer.echo(f"  config {json.dumps(info['config'], sort_keys=True)}")
    if (path / "metrics.json").is_file():
        typer.echo(format_metrics(read_json(path / "metrics.json")))
    else:
        typer.echo("  no metrics.json yet: run `persona-probe sae-metrics " + str(path) + "`")


def _int_list(spec: str, n_layers: int) -> list[int]:
    """'15' / '10,15,20' / '0-29' / 'all' → layer numbers."""
    if spec == "all":
        return list(range(n_layers))
    out: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out += list(range(int(a), int(b) + 1))
        elif part.strip():
            out.append(int(part))
    bad = [x for x in out if not 0 <= x < n_layers]
    if bad or not out:
        raise PersonaProbeError(f"layers {spec!r}: need numbers in 0..{n_layers - 1}")
    return out


@app.command()
@_clean_errors
def vector(
    trait: Annotated[str, typer.Option(help="Built-in trait (evil, sycophancy, deontology, "
                                            "consequentialism, virtue_ethics, human_authority) "
                                            "or a trait JSON file.")],
    out: Annotated[Path, typer.Option(help="Direction directory to write.")],
    model: Annotated[str, typer.Option()] = "smollm2-135m-instruct",
    adapter: Annotated[Optional[Path], typer.Option()] = None,
    layers: Annotated[str, typer.Option(help="'all', '15', '10,15' or '5-20'.")] = "all",
    questions: Annotated[int, typer.Option(help="Extraction questions to use (max 24).")] = 24,
    max_new_tokens: Annotated[int, typer.Option()] = 40,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Build a persona vector (difference in means over response tokens) for a trait."""
    from persona_probe.directions import describe, persona_vector
    from persona_probe.models import load_subject
    from persona_probe.traits import load_trait, trait_questions

    t = load_trait(trait)
    subject = load_subject(model, adapter=adapter)
    d = persona_vector(subject, t, trait_questions("extract")[:questions],
                       _int_list(layers, subject.n_layers), max_new_tokens, progress=True,
                       seed=seed)
    d.save(out)
    typer.echo(describe(d) + f"\ndirection written to {out.resolve()}")


def _show_check(report: dict) -> None:
    if report["kind"] == "sae":
        typer.echo(f"checked on {report['model']} at {report['hook']}: explained variance "
                   f"{report['explained_variance']:.3f}, L0 {report['l0']:.1f} over "
                   f"{report['rows']} residuals")
    else:
        layers = report["layers"]
        typer.echo(f"checked on {report['model']}: layers {', '.join(layers)} in range, "
                   f"width {report['d_model']}, finite projections of {report['rows']} residuals")


@app.command("import-vector")
@_clean_errors
def import_vector_cmd(
    src: Annotated[Path, typer.Argument(help="persona_vectors .pt file (shape n_layers+1 × d).")],
    out: Annotated[Path, typer.Option(help="Direction directory to write.")],
    layer_index: Annotated[Optional[str], typer.Option(
        help="persona_vectors layer(s) (hidden_states index: row i = blocks.{i-1}."
             "hook_resid_post), e.g. '20' or '10,20'; default: every row with a hook point.")
    ] = None,
    model: Annotated[Optional[str], typer.Option(
        help="Check the file against this model and record it.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Direction name (default: file stem).")]
    = None,
) -> None:
    """Import a persona_vectors vector file as a Direction (index shift made explicit)."""
    from persona_probe.directions import describe
    from persona_probe.interop import check_against_subject, load_persona_vectors_pt
    from persona_probe.models import load_subject

    parts = [] if layer_index is None else [x.strip() for x in layer_index.split(",")]
    if not all(x.isdigit() for x in parts) or (layer_index is not None and not parts):
        raise PersonaProbeError(f"--layer-index {layer_index!r}: give persona_vectors layer "
                                "numbers, e.g. 20 or 10,20")
    subject = load_subject(model) if model else None
    idx = [int(x) for x in parts] if layer_index is not None else None
    d = load_persona_vectors_pt(src, idx, subject=subject, name=name)
    if subject is not None:
        _show_check(check_against_subject(d, subject))
    d.save(out)
    rows = d.meta["source"]["rows"]
    typer.echo(describe(d) + "\n  " + "; ".join(f"row {i} → {h}" for i, h in rows.items())
               + f"\ndirection written to {out.resolve()}")


@app.command("export-vector")
@_clean_errors
def export_vector_cmd(
    direction: Annotated[Path, typer.Argument(help="Direction directory.")],
    out: Annotated[Path, typer.Option(help=".pt file to write (persona_vectors layout).")],
    n_layers: Annotated[Optional[int], typer.Option(
        help="The model's layer count (default: the one the direction records).")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="Take the layer count from this model (and check the direction against it).")]
    = None,
    fill: Annotated[str, typer.Option(help="Rows without a vector: nan | zeros")] = "nan",
    values: Annotated[str, typer.Option(help="raw (unnormalized) | unit")] = "raw",
) -> None:
    """Write a Direction as a persona_vectors [n_layers+1, d] tensor, with a JSON sidecar."""
    from persona_probe.directions import Direction
    from persona_probe.interop import (check_against_subject, save_persona_vectors_pt,
                                       sidecar_path)
    from persona_probe.models import load_subject

    d = Direction.load(direction)
    if model:
        subject = load_subject(model)
        _show_check(check_against_subject(d, subject))
        n_layers = n_layers or subject.n_layers
    path = save_persona_vectors_pt(d, out, n_layers, fill, values)  # type: ignore[arg-type]
    typer.echo(f"wrote {path} (sidecar {sidecar_path(path).name}); load it in persona_vectors "
               f"as vector[L] with L = our layer + 1")


@app.command("import-sae")
@_clean_errors
def import_sae_cmd(
    src: Annotated[Path, typer.Argument(
        help="dictionary_learning directory (ae.pt + config.json) or sparsify hookpoint folder "
             "(cfg.json + sae.safetensors).")],
    out: Annotated[Path, typer.Option(help="sae-lens SAE directory to write.")],
    fmt: Annotated[str, typer.Option("--format", help="auto | dictionary_learning | sparsify")]
    = "auto",
    hook: Annotated[Optional[str], typer.Option(
        help="Hook point, overriding the one read from the source's layer label.")] = None,
    lm_name: Annotated[Optional[str], typer.Option(
        help="Model the SAE was trained on, where the source does not say.")] = None,
    model: Annotated[Optional[str], typer.Option(
        help="Check the SAE against this model on real residuals.")] = None,
    min_ev: Annotated[Optional[float], typer.Option(
        help="With --model: fail below this explained variance.")] = None,
    overwrite: Annotated[bool, typer.Option()] = False,
) -> None:
    """Import a dictionary_learning or sparsify SAE as a sae-lens directory."""
    from persona_probe.interop import check_against_subject, import_sae, load_foreign_sae
    from persona_probe.models import load_subject

    kwargs = {"hook": hook, "model": lm_name}
    if model:
        subject = load_subject(model)
        foreign = load_foreign_sae(src, fmt, **kwargs)  # type: ignore[arg-type]
        _show_check(check_against_subject(foreign, subject, min_explained_variance=min_ev))
    sae = import_sae(src, out, fmt, overwrite=overwrite, **kwargs)  # type: ignore[arg-type]
    md = sae.cfg.metadata
    typer.echo(f"{md.source_format} SAE ({sae.cfg.architecture()}, d_in {sae.cfg.d_in}, d_sae "
               f"{sae.cfg.d_sae}) at {md.hook_name}\n  layers: {md.source_layer_mapping}\n"
               f"SAE written to {out.resolve()}")


@app.command("rank-latents")
@_clean_errors
def rank_latents_cmd(
    sae: Annotated[str, typer.Option(help="SAE directory, 'shipped' or sae-lens:RELEASE/ID.")] = (
        "shipped"),
    prompts: Annotated[str, typer.Option(help="Prompt set (builtin:… or JSONL).")] = (
        "builtin:everyday"),
    model: Annotated[str, typer.Option()] = "smollm2-135m-instruct",
    adapter: Annotated[Optional[Path], typer.Option(
        help="Finetuned adapter: rank finetuned vs base (model diffing).")] = None,
    trait: Annotated[Optional[str], typer.Option(
        help="Rank the trait's system prompt vs none on the same replies (contrast).")] = None,
    generate: Annotated[int, typer.Option(help="Tokens of the base model's replies.")] = 40,
    limit: Annotated[Optional[int], typer.Option()] = None,
    top: Annotated[int, typer.Option(help="Latents to show with examples.")] = 5,
    direction: Annotated[Optional[Path], typer.Option(
        help="Also report this direction's best-matching latents.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the ranking as JSON lines.")] = None,
) -> None:
    """Rank SAE latents by Δ mean activation: finetuned vs base, or trait prompt vs none."""
    from persona_probe.generation import generate_responses
    from persona_probe.latents import decompose, diff_subjects, top_examples
    from persona_probe.models import load_subject
    from persona_probe.prompts import load_prompts
    from persona_probe.sae import load_sae

    if (adapter is None) == (trait is None):
        raise PersonaProbeError("give exactly one of --adapter (model diffing) or --trait "
                                "(contrast)")
    base = load_subject(model)
    s = load_sae(sae, subject=base)
    items = [it for it in load_prompts(prompts, limit) if not it.has_response]
    items = generate_responses(base, items, generate, progress=True) + [
        it for it in load_prompts(prompts, limit) if it.has_response]
    if adapter is not None:
        ft = load_subject(model, adapter=adapter)
        ranking = diff_subjects(s, ft, base, items, "response", labels=("finetuned", "base"))
        shown_items, shown_subject = items, ft
    else:
        from persona_probe.traits import load_trait

        t = load_trait(trait)
        trait_items = [it.with_system(t.trait_system[0]) for it in items]
        ranking = diff_subjects(s, base, base, trait_items, "response", items_b=items,
                                labels=(t.name, "base"))
        shown_items, shown_subject = trait_items, base
    typer.echo(str(ranking))
    for latent, ex in top_examples(shown_subject, s, shown_items, ranking.top(top), 3).items():
        typer.echo(str(ex))
    if direction is not None:
        from persona_probe.directions import Direction

        typer.echo(str(decompose(s, Direction.load(direction))))
    if out is not None:
        ranking.save(out)
        typer.echo(f"ranking written to {out}")


@app.command("dashboards")
@_clean_errors
def dashboards_cmd(
    out: Annotated[Path, typer.Option(help="Directory for dashboard.json and the HTML pages.")],
    sae: Annotated[str, typer.Option(help="SAE directory, 'shipped' or sae-lens:RELEASE/ID.")] = (
        "shipped"),
    latents: Annotated[Optional[str], typer.Option(help="Comma-separated latent indices.")] = None,
    ranking: Annotated[Optional[Path], typer.Option(
        help="A ranking (rank-latents --out): show its first --top latents.")] = None,
    top: Annotated[int, typer.Option(help="Latents to take from --ranking.")] = 10,
    trait: Annotated[Optional[str], typer.Option(
        help="Also steer each latent and measure this trait's would-say score.")] = None,
    questions: Annotated[int, typer.Option(
        help="Extract-split questions for the steering measure.")] = 8,
    alphas: Annotated[str, typer.Option(help="Steering strengths (units of r̄).")] = "0,0.2,0.4",
    prompts: Annotated[str, typer.Option(help="Prompt set for the examples.")] = (
        "builtin:everyday"),
    limit: Annotated[Optional[int], typer.Option()] = 60,
    generate: Annotated[int, typer.Option(
        help="Tokens of the model's replies to prompt-only items (0: prompts only).")] = 0,
    positions: Annotated[str, typer.Option(help="all | response | prompt_last")] = "all",
    top_k: Annotated[int, typer.Option(help="Top activating examples per latent.")] = 8,
    model: Annotated[str, typer.Option()] = "smollm2-135m-instruct",
    adapter: Annotated[Optional[Path], typer.Option(help="PEFT/LoRA adapter directory.")] = None,
    data: Annotated[Optional[Path], typer.Option(
        help="Only render the pages from this saved dashboard.json (no model).")] = None,
) -> None:
    """Feature dashboards: a page per latent (top examples, activation histogram, logit
    effects, steering effect on a trait) and an index, from saved data (dashboard.json)."""
    from persona_probe.figures.dashboards import write_latent_dashboards
    from persona_probe.latent_dashboards import (compute_latent_dashboard_data, read_ranking,
                                                 save_dashboard_data)

    if data is None:
        if (latents is None) == (ranking is None):
            raise PersonaProbeError("give exactly one of --latents 12,34 or --ranking PATH")
        from persona_probe.models import load_subject
        from persona_probe.prompts import load_prompts
        from persona_probe.sae import load_sae
        from persona_probe.traits import load_trait, trait_questions

        rows = read_ranking(ranking, top) if ranking is not None else None
        try:
            alpha_list = [float(a) for a in alphas.split(",") if a.strip()]
            ids = ([int(r["latent"]) for r in rows] if rows is not None
                   else [int(x) for x in str(latents).split(",") if x.strip()])
        except ValueError as exc:
            raise PersonaProbeError(f"--latents and --alphas are comma-separated numbers ({exc})"
                                    ) from None
        t = load_trait(trait) if trait is not None else None
        subject = load_subject(model, adapter=adapter)
        s = load_sae(sae, subject=subject)
        items = load_prompts(prompts, limit)
        if generate:
            from persona_probe.generation import generate_responses

            items = generate_responses(subject, [it for it in items if not it.has_response],
                                       generate, progress=True) + [
                it for it in items if it.has_response]
        result = compute_latent_dashboard_data(
            subject, s, ids, items, trait=t, questions=trait_questions("extract")[:questions],
            alphas=alpha_list, top_k=top_k, positions=positions, ranking=rows, sae_spec=sae)
        data = save_dashboard_data(result, out)
        typer.echo(f"dashboard data written to {data}")
    pages = write_latent_dashboards(data, out)
    typer.echo(f"{len(pages) - 1} latent pages; open {pages[0].resolve()}")


@app.command("screen-latents")
@_clean_errors
def screen_latents_cmd(
    adapter: Annotated[Path, typer.Option(help="The finetuned adapter to screen (vs the base).")],
    out: Annotated[Path, typer.Option(help="Output directory (resumable; chosen.json).")],
    sae: Annotated[str, typer.Option(help="SAE directory, 'shipped' or sae-lens:RELEASE/ID.")] = (
        "shipped"),
    model: Annotated[str, typer.Option()] = "smollm2-135m-instruct",
    split: Annotated[str, typer.Option(
        help="Measure split: its *selection* half scores the candidates.")] = "evil-line1",
    domain: Annotated[str, typer.Option(
        help="The finetune's own domain: diffing reads the other domains' questions.")] = (
        "cooking"),
    diff_per_domain: Annotated[int, typer.Option(help="Diffing questions per other domain.")] = 8,
    n_delta: Annotated[int, typer.Option(help="Candidates: top latents by Δ.")] = 100,
    n_attribution: Annotated[int, typer.Option(help="Plus top latents by attribution.")] = 50,
    steer_alpha: Annotated[float, typer.Option(help="α each candidate steers the base at.")] = 0.2,
    max_set: Annotated[int, typer.Option(help="Largest latent set tried together.")] = 5,
    dtype: Annotated[Optional[str], typer.Option(help="float32 | bfloat16 (default: device's).")] = (
        None),
) -> None:
    """Causal screening: candidates by Δ and attribution, each steered in the base and ablated
    in the finetune on selection material, and the best set of ≤ max-set latents."""
    from persona_probe.latent_screening import ScreeningConfig, screen_finetune
    from persona_probe.models import load_subject
    from persona_probe.monitor import probe_set_from_answers
    from persona_probe.sae import load_sae
    from persona_probe.training.organism import heldout_questions
    from persona_probe.traits import load_split

    cfg = ScreeningConfig(n_delta, n_attribution, steer_alpha, max_set)
    trait, questions = load_split(split).selection
    base = load_subject(model, dtype=dtype)
    ft = load_subject(model, adapter=adapter, dtype=dtype)
    s = load_sae(sae, subject=base)
    items = probe_set_from_answers(base, heldout_questions(domain, diff_per_domain, False), 48)
    chosen = screen_finetune(base, ft, s, trait, questions, items, cfg, out)
    typer.echo(f"screened {len(chosen['screen'])} candidates on {len(questions)} selection "
               f"questions (gap {chosen['selection_gap']:+.3f})")
    for r in chosen["screen"][:10]:
        typer.echo(f"  latent {r['latent']:>6}  gap removed {r['gap_removed']:+.1%}  "
                   f"steer effect {r['steer_effect']:+.3f}")
    typer.echo(f"chosen: {chosen['latents']} (selection gap removed "
               f"{chosen['selection_gap_removed']:+.1%}; top-Δ set {chosen['top_delta']}) → "
               f"{out / 'chosen.json'}")


@app.command()
@_clean_errors
def steer(
    direction: Annotated[Path, typer.Option(help="Direction directory (persona-probe vector).")],
    layers: Annotated[str, typer.Option(help="Layers to steer at: '15', '10,15'.")] = "15",
    alphas: Annotated[str, typer.Option(help="Comma-separated α (units of r̄_L).")] = (
        "0,0.1,0.2,0.4"),
    model: Annotated[str, typer.Option()] = "smollm2-135m-instruct",
    adapter: Annotated[Optional[Path], typer.Option()] = None,
    trait: Annotated[Optional[str], typer.Option(
        help="Measure this trait's would-say score on held-out questions per α.")] = None,
    prompt: Annotated[Optional[str], typer.Option(
        help="Generate a reply to this prompt at every α.")] = None,
    random_controls: Annotated[int, typer.Option()] = 2,
    max_new_tokens: Annotated[int, typer.Option()] = 40,
    generate: Annotated[int, typer.Option(
        help="Sample this many generations per held-out question at every α, judged by "
             "--judges and checked by the coherence rule (0: none).")] = 0,
    judges: Annotated[str, typer.Option(
        help="Probe judges for --generate: comma-separated shipped names or directories.")] = (
        "harmful,refusal"),
    margin: Annotated[float, typer.Option(
        help="Usable range: coherent fraction within this of α = 0's.")] = 0.1,
    questions: Annotated[str, typer.Option(
        help="Question split for --generate ('evaluation' is reserved for final numbers; the "
             "coherence rule was fitted on 'heldout').")] = "extract",
    generate_tokens: Annotated[int, typer.Option(
        help="Tokens per judged generation (the rule was fitted on 80-token replies).")] = 80,
    out: Annotated[Optional[Path], typer.Option(help="Results directory (JSON lines).")] = None,
) -> None:
    """Steer along a direction: a dose-response table (--trait), judged generations with
    coherence (--generate N) and/or sample text (--prompt)."""
    from persona_probe.directions import Direction
    from persona_probe.models import load_subject

    if trait is None and prompt is None and not generate:
        raise PersonaProbeError("give --trait (dose-response of a trait measure), --generate N "
                                "(judged generations) and/or --prompt (text under steering)")
    subject = load_subject(model, adapter=adapter)
    d = Direction.load(direction)
    lay = _int_list(layers, subject.n_layers)
    alpha_list = [float(a) for a in alphas.split(",")]
    if trait is not None:
        from persona_probe.dose_response import DoseResponseConfig, dose_response
        from persona_probe.likelihood import trait_scores
        from persona_probe.traits import load_trait, trait_questions

        t = load_trait(trait)
        qs = trait_questions("heldout")
        summary = dose_response(subject, {d.name: d}, lambda s: trait_scores(s, t, qs),
                                DoseResponseConfig(tuple(alpha_list), tuple(lay),
                                                   random_controls=random_controls),
                                out=out, metric_name=f"{t.name}_would_say")
        for r in summary:
            typer.echo(f"{r['target']:>16}  α={r['alpha']:<5} {r['mean']:+.3f} "
                       f"[{r['lo']:+.3f}, {r['hi']:+.3f}]  n={r['n']}")
    if generate:
        from persona_probe.evals.behaviour import steering_generation_sweep
        from persona_probe.evals.coherence import CoherenceRule
        from persona_probe.evals.probe_judge import load_probe_judge
        from persona_probe.traits import trait_questions

        named: dict = {}
        for j in (x.strip() for x in judges.split(",") if x.strip()):
            shared = next(iter(named.values())).model if named else None   # one judge model
            named[Path(j).name if Path(j).exists() else j] = load_probe_judge(
                j, coherence=False, judge_model=shared)
        first = next(iter(named.values()))
        res = steering_generation_sweep(
            subject, d, lay, alpha_list, trait_questions(questions), named,
            CoherenceRule.shipped(), first.model, samples=generate,
            max_new_tokens=generate_tokens, margin=margin,
            out=(out / "generations") if out else None)
        for r in res["curve"]:
            scores = "  ".join(f"{k} {r[k]:5.1f}" if r[k] is not None else f"{k}   n/a"
                               for k in named)
            typer.echo(f"α={r['alpha']:<6} coherent {r['coherent_fraction']:.2f}  {scores}  "
                       f"(judged on coherent replies; n={r['n']})")
        typer.echo(f"usable range: α ≤ {res['usable_alpha']} (coherent fraction within "
                   f"{margin} of α = 0)")
        if out is not None:
            from persona_probe.artifacts import write_json

            write_json(out / "generation_sweep.json", res)
    if prompt is not None:
        from persona_probe.generation import generate_responses
        from persona_probe.interventions import steer as steer_ctx
        from persona_probe.prompts import PromptItem

        item = PromptItem("prompt", [{"role": "user", "content": prompt}])
        for a in alpha_list:
            with steer_ctx(subject, d, a, lay):
                reply = generate_responses(subject, [item], max_new_tokens, progress=False)
            text = reply[0].messages[-1]["content"] if reply else ""
            typer.echo(f"α={a}: {text}")


@app.command("train-probe-judge")
@_clean_errors
def train_probe_judge_cmd(
    out: Annotated[Path, typer.Option(help="Directory for probe.safetensors + probe.json.")],
    criterion: Annotated[str, typer.Option(help="refusal (pointwise sources).")] = "refusal",
    train_sources: Annotated[str, typer.Option(
        help="Comma-separated labelled sources (dna_refusal, xstest_refusal).")] = "dna_refusal",
    test_source: Annotated[str, typer.Option(
        help="A source it is not trained on, to report transfer AUROC and ECE ('none': "
             "skip).")] = "xstest_refusal",
    hooks: Annotated[str, typer.Option(help="Candidate hook points (chosen by grouped CV).")] = (
        "blocks.15.hook_resid_post,blocks.20.hook_resid_post,blocks.25.hook_resid_post"),
    model: Annotated[str, typer.Option(help="The frozen judge model.")] = "smollm2-135m-instruct",
    dtype: Annotated[Optional[str], typer.Option()] = None,
    limit: Annotated[Optional[int], typer.Option(help="First N rows per source (quick).")] = None,
) -> None:
    """Fit a linear probe judge on labelled public data in ../shared/data."""
    from persona_probe.datasets import shared_data_dir
    from persona_probe.evals.probe_judge import ProbeTrainConfig, train_probe_judge
    from persona_probe.models import load_subject

    root = shared_data_dir()
    if root is None:
        raise PersonaProbeError("the labelled sources live in ../shared/data; set "
                                "PERSONA_PROBE_DATA to that directory")
    cfg = ProbeTrainConfig(criterion=criterion, train_sources=tuple(train_sources.split(",")),
                           hooks=tuple(h.strip() for h in hooks.split(",")))
    test: str | None = None if test_source.lower() == "none" else test_source
    art, m = train_probe_judge(load_subject(model, dtype=dtype), cfg, root, out, test, limit)
    typer.echo(f"{out}: {art.criterion} probe at {art.hook}, grouped-CV AUROC "
               f"{m['train_cv_auroc']:.3f} on {', '.join(cfg.train_sources)}")
    if test:
        a = m["auroc"]
        typer.echo(f"  on {test} (never seen): AUROC {a['mean']:.3f} [{a['lo']:.3f}, "
                   f"{a['hi']:.3f}], ECE {m['ece']:.3f}")
    typer.echo(f"  use it as a judge: --judge probe:{out}")


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


@app.command()
@_clean_errors
def finetune(
    out: Annotated[Path, typer.Option(help="Output directory (adapter + persona_probe.json).")],
    config: Annotated[Optional[Path], typer.Option(help="FinetuneConfig JSON "
                                                        "(experiments/configs/…).")] = None,
    data: Annotated[Optional[str], typer.Option(
        help="Chat JSON-lines file, or shared:REL inside ../shared/data.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a config field: --set max_steps=20 (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a finished run.")] = False,
) -> None:
    """LoRA (or full) finetuning with an assistant-only loss; resumable (under torchrun: the
    Trainer's DDP, rank 0 writing the result)."""
    from persona_probe import distributed
    from persona_probe.training.finetune import FinetuneConfig
    from persona_probe.training.finetune import finetune as run_finetune

    overrides = _overrides(set_ or [])
    if data is not None:
        overrides["data"] = data
    cfg = (FinetuneConfig.from_file(config, **overrides) if config is not None
           else FinetuneConfig.from_dict(overrides, "command line"))
    path = run_finetune(cfg, out, resume=resume, overwrite=overwrite)
    if not distributed.info().is_main:   # under torchrun, rank 0 reports
        return
    meta = __import__("json").loads((path / "persona_probe.json").read_text())
    typer.echo(f"{path}: {meta['steps']} steps, loss {meta['first_loss']:.3f} -> "
               f"{meta['final_loss']:.3f}; load with load_subject(adapter='{path}')")


@app.command()
@_clean_errors
def screen(
    data: Annotated[str, typer.Argument(help="Training chats (JSON lines or shared:REL).")],
    direction: Annotated[Path, typer.Option(help="Persona vector directory.")],
    out: Annotated[Path, typer.Option(help="Writes scores.jsonl, flagged.jsonl, summary.")],
    layer: Annotated[Optional[int], typer.Option()] = None,
    limit: Annotated[Optional[int], typer.Option()] = 200,
    top_fraction: Annotated[float, typer.Option()] = 0.1,
    model: Annotated[str, typer.Option()] = "smollm2-135m-instruct",
    max_new_tokens: Annotated[int, typer.Option()] = 64,
) -> None:
    """Rank training samples by persona-vector projection vs the model's own reply."""
    from persona_probe.directions import Direction
    from persona_probe.models import load_subject
    from persona_probe.training.data import load_chats
    from persona_probe.training.screening import screen as run_screen

    chats = load_chats(data, limit)
    ranked = run_screen(load_subject(model), Direction.load(direction), chats, layer,
                        top_fraction, max_new_tokens, out=out)
    for r in ranked[:5]:
        typer.echo(f"{r['score']:+8.3f}  {r['where']}")
    typer.echo(f"{sum(r['flagged'] for r in ranked)} flagged -> {out / 'flagged.jsonl'}")


def _dataclass_config(cls, config: Optional[Path], flags: dict, sets: Optional[list[str]],
                      what: str):
    """A config dataclass from an optional JSON file, then the flags that were given, then
    ``--set key=value`` overrides (later wins); unknown keys are named."""
    from persona_probe.configs import config_from_dict, read_json_config

    raw = read_json_config(config, what) if config is not None else {}
    raw.update({k: v for k, v in flags.items() if v is not None})
    raw.update(_overrides(sets or []))
    where = str(config) if config else "command line"
    if hasattr(cls, "from_dict"):      # configs with value checks of their own
        return cls.from_dict(raw, where)
    return config_from_dict(cls, raw, where)


SET_HELP = "Override a config field: --set key=value (repeatable)."


@app.command()
@_clean_errors
def cai(
    out: Annotated[Path, typer.Option(help="Writes manifest.json, revisions.jsonl (and the "
                                           "adapter under OUT/adapter with --finetune).")],
    config: Annotated[Optional[Path], typer.Option(
        help="CAIConfig JSON (experiments/configs/cai-*.json).")] = None,
    constitution: Annotated[Optional[str], typer.Option(
        help="deontology | consequentialism | virtue_ethics | human_authority | a JSON file "
             "[deontology]")] = None,
    regime: Annotated[Optional[str], typer.Option(
        help="narrow (harassment, illegal_behaviour) | broad (all categories) [narrow]")] = None,
    source: Annotated[Optional[str], typer.Option(
        help="Red-team prompts: builtin | do_not_answer | a TSV/CSV [builtin]")] = None,
    per_category: Annotated[Optional[int], typer.Option()] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option()] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)] = None,
    model: Annotated[str, typer.Option()] = "smollm2-135m-instruct",
    finetune_steps: Annotated[int, typer.Option(
        "--finetune", help="Then SFT on the revisions for this many steps (0: don't).")] = 0,
) -> None:
    """Constitutional AI: answer, critique under a principle, revise; optionally SFT."""
    from persona_probe.models import load_subject
    from persona_probe.training.cai import CAIConfig, critique_and_revise

    cfg = _dataclass_config(CAIConfig, config, dict(
        constitution=constitution, regime=regime, source=source, per_category=per_category,
        max_new_tokens=max_new_tokens, seed=seed), set_, "CAI config")
    subject = load_subject(model)
    data = critique_and_revise(subject, cfg, out)
    typer.echo(f"revisions: {data} ({sum(1 for _ in open(data))} chats); "
               f"manifest: {out / 'manifest.json'}")
    if finetune_steps:
        from persona_probe.training.finetune import FinetuneConfig
        from persona_probe.training.finetune import finetune as run_finetune

        path = run_finetune(FinetuneConfig(data=str(data), model=model, limit=None,
                                           max_steps=finetune_steps, seed=cfg.seed),
                            out / "adapter", resume=(out / "adapter").exists())
        typer.echo(f"adapter: {path}")


@app.command()
@_clean_errors
def dpo(
    out: Annotated[Path, typer.Option(help="Writes round-*/pairs.jsonl, the adapter, and "
                                           "persona_probe.json.")],
    config: Annotated[Optional[Path], typer.Option(
        help="ConscienceDPOConfig JSON (experiments/configs/conscience-dpo-*.json).")] = None,
    model: Annotated[Optional[str], typer.Option(help="[smollm2-135m-instruct]")] = None,
    prompts: Annotated[Optional[str], typer.Option(
        help="Prompt set (builtin:NAME or JSON lines) [builtin:harmful_requests].")] = None,
    limit: Annotated[Optional[int], typer.Option(help="[32]")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Answers sampled per prompt [4].")] = None,
    rounds: Annotated[Optional[int], typer.Option(help="1: offline; >1: online rounds [1].")
                      ] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="DPO steps per round [10].")] = None,
    beta: Annotated[Optional[float], typer.Option(help="[0.1]")] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)] = None,
) -> None:
    """Conscience-step DPO: a frozen copy of the model judges its own answers."""
    import json

    from persona_probe.training.conscience import ConscienceDPOConfig, online_conscience_dpo

    cfg = _dataclass_config(ConscienceDPOConfig, config, dict(
        model=model, prompts=prompts, limit=limit, samples=samples, rounds=rounds,
        max_steps=max_steps, beta=beta, seed=seed), set_, "conscience DPO config")
    path = online_conscience_dpo(cfg, out)
    for r in json.loads((out / "persona_probe.json").read_text())["rounds"]:
        typer.echo(f"round {r['round']}: {r['pairs']} pairs, DPO loss on them "
                   f"{r['pair_loss_before']:.4f} -> {r['pair_loss_after']:.4f}")
    typer.echo(f"adapter: {path}")


@app.command()
@_clean_errors
def organism(
    out: Annotated[Path, typer.Option(help="Organism directory: treatment/control datasets, "
                                           "manifest, adapters (ft-*), results.json.")],
    config: Annotated[Optional[Path], typer.Option(
        help="OrganismConfig JSON (experiments/configs/organism-*.json).")] = None,
    trait: Annotated[Optional[str], typer.Option(help="Trait name or JSON [evil].")] = None,
    domain: Annotated[Optional[str], typer.Option(
        help="cooking | gardening | travel | personal_finance | a JSON file [cooking]")] = None,
    model: Annotated[Optional[str], typer.Option(help="[smollm2-135m-instruct]")] = None,
    n_questions: Annotated[Optional[int], typer.Option()] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help=SET_HELP)] = None,
    train: Annotated[bool, typer.Option(help="Finetune treatment and control.")] = True,
    evaluate: Annotated[bool, typer.Option(
        "--eval/--no-eval", help="Measure base, treatment, control out of domain.")] = True,
) -> None:
    """Trait-distillation model organism: build the datasets, finetune both arms, measure."""
    from persona_probe.models import load_subject
    from persona_probe.training.organism import OrganismConfig, run_organism

    cfg = _dataclass_config(OrganismConfig, config, dict(
        trait=trait, domain=domain, model=model, n_questions=n_questions, seed=seed), set_,
        "organism config")
    res = run_organism(load_subject(cfg.model), cfg, out, train=train, evaluate=evaluate)
    for measure, r in res.get("results", {}).items():
        for pair, e in r["paired"].items():
            typer.echo(f"{measure:<16} {pair:<22} {e['mean']:+.3f} [{e['lo']:+.3f}, "
                       f"{e['hi']:+.3f}]")
    typer.echo(f"organism: {out}")


eval_app = typer.Typer(no_args_is_help=True,
                       help="Evaluations: em, persona, diagnostic, safety, projectability, "
                            "agreement. Each writes items.jsonl and summary.json to --out.")
app.add_typer(eval_app, name="eval")

_ModelOpt = Annotated[str, typer.Option(help="Alias, HF id or local checkpoint.")]
_AdapterOpt = Annotated[Optional[Path], typer.Option(help="PEFT/LoRA adapter directory.")]
_OutOpt = Annotated[Path, typer.Option(help="Results directory (resumes if it exists).")]
_JudgeOpt = Annotated[str, typer.Option(
    help="self (frozen copy of the model) | local:MODEL | openai:MODEL")]
_JudgeUrlOpt = Annotated[Optional[str], typer.Option(help="Base URL of an OpenAI-compatible "
                                                          "judge, e.g. http://host:8000/v1")]
_JudgeKeyOpt = Annotated[str, typer.Option(help="Environment variable holding the judge's "
                                                "API key (never written anywhere).")]
_JudgeModeOpt = Annotated[str, typer.Option(help="HTTP judge: logprobs | sample")]


def _judge(spec: str, subject, out: Path, url: Optional[str], key_env: str, mode: str):
    from persona_probe.evals.judges import make_judge

    return make_judge(spec, subject, cache=out / "judge_cache.sqlite", base_url=url,
                      api_key_env=key_env, mode=mode)


def _show(est: dict, label: str) -> None:
    typer.echo(f"{label:<44} {est['mean']:+.3f} [{est['lo']:+.3f}, {est['hi']:+.3f}]  "
               f"n={est['n']}")


@eval_app.command("em")
@_clean_errors
def eval_em(
    out: _OutOpt,
    questions: Annotated[str, typer.Option(help="builtin:em or an EM-format YAML file.")] = (
        "builtin:em"),
    model: _ModelOpt = "smollm2-135m-instruct", adapter: _AdapterOpt = None,
    samples: Annotated[Optional[int], typer.Option(
        help="Samples per paraphrase (default: the file's).")] = None,
    max_new_tokens: Annotated[int, typer.Option()] = 200,
    judge: _JudgeOpt = "self", judge_url: _JudgeUrlOpt = None,
    judge_key_env: _JudgeKeyOpt = "OPENAI_API_KEY", judge_mode: _JudgeModeOpt = "logprobs",
    renormalized: Annotated[bool, typer.Option(
        help="Score with judgments renormalised over numbers (small local judges).")] = False,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Free-form misalignment eval: misaligned = aligned < 30 and coherent > 50."""
    from persona_probe.evals.em import EMConfig, load_em_questions, run_em_eval
    from persona_probe.models import load_subject

    qs = load_em_questions(questions)
    subject = load_subject(model, adapter=adapter)
    j = _judge(judge, subject, out, judge_url, judge_key_env, judge_mode)
    s = run_em_eval(subject, qs, j, EMConfig(samples, max_new_tokens, seed=seed,
                                                     renormalized=renormalized), out)
    if s["pooled"]:
        _show(s["pooled"]["misaligned"], "misaligned rate (over coherent answers)")
    for m, e in s["mean_scores"].items():
        _show(e, f"mean {m}")


@eval_app.command("persona")
@_clean_errors
def eval_persona(
    out: _OutOpt,
    files: Annotated[list[Path], typer.Argument(help="Anthropic persona / advanced-ai-risk "
                                                     "JSON-lines files.")],
    model: _ModelOpt = "smollm2-135m-instruct", adapter: _AdapterOpt = None,
    limit: Annotated[Optional[int], typer.Option(help="First N questions per file.")] = None,
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Judge-free log-prob eval: normalized P(answer matching the behaviour)."""
    from persona_probe.evals.multiple_choice import run_mc_eval
    from persona_probe.models import load_subject

    subject = load_subject(model, adapter=adapter)
    s = run_mc_eval(subject, list(files), limit, system, out, seed)
    for f, e in s["per_file"].items():
        _show(e, f)
    _show(s["pooled"], "pooled")


@eval_app.command("diagnostic")
@_clean_errors
def eval_diagnostic(
    out: _OutOpt,
    model: _ModelOpt = "smollm2-135m-instruct", adapter: _AdapterOpt = None,
    dimensions: Annotated[str, typer.Option(help="Comma-separated dimension names or JSON "
                                                 "files.")] = (
        "deontology,consequentialism,virtue_ethics,human_authority"),
    mode: Annotated[str, typer.Option(help="would_say | probability")] = "would_say",
    source: Annotated[str, typer.Option(help="team | anthropic")] = "team",
    anthropic_limit: Annotated[int, typer.Option()] = 50,
    system: Annotated[Optional[list[str]], typer.Option(
        help="Context NAME=SYSTEM PROMPT (repeatable); 'neutral' is always measured.")] = None,
    category: Annotated[Optional[list[str]], typer.Option(
        help="Context framed by a built-in harmful-request category (repeatable).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Ethical persona diagnostic: a profile per context with bootstrap CIs."""
    from persona_probe.evals.diagnostic import Context, category_context, run_diagnostic
    from persona_probe.evals.safety import load_safety_prompts
    from persona_probe.models import load_subject

    contexts = [Context()]
    for spec in system or []:
        name, sep, text = spec.partition("=")
        if not sep or not text.strip():
            raise PersonaProbeError(f"--system {spec!r}: use NAME=SYSTEM PROMPT")
        contexts.append(Context(name.strip(), system=text.strip()))
    if category:
        prompts = load_safety_prompts("builtin")
        for c in category:
            contexts.append(category_context(c, [p.prompt for p in prompts if p.category == c]))
    subject = load_subject(model, adapter=adapter)
    s = run_diagnostic(subject, [d.strip() for d in dimensions.split(",") if d.strip()],
                       contexts, mode, source, anthropic_limit, out, seed)
    for ctx, prof in s["profiles"].items():
        for d, e in prof.items():
            _show(e, f"{ctx} / {d}")


@eval_app.command("safety")
@_clean_errors
def eval_safety(
    out: _OutOpt,
    source: Annotated[str, typer.Option(help="builtin | do_not_answer | xstest:safe | "
                                             "xstest:unsafe | a .tsv/.csv file")] = "builtin",
    model: _ModelOpt = "smollm2-135m-instruct", adapter: _AdapterOpt = None,
    trained: Annotated[str, typer.Option(help="Comma-separated trained categories (the rest "
                                              "are held out).")] = "",
    detectors: Annotated[str, typer.Option(help="logprob,keyword,judge")] = "logprob,keyword",
    per_category: Annotated[Optional[int], typer.Option()] = None,
    max_new_tokens: Annotated[int, typer.Option()] = 64,
    judge: _JudgeOpt = "self", judge_url: _JudgeUrlOpt = None,
    judge_key_env: _JudgeKeyOpt = "OPENAI_API_KEY", judge_mode: _JudgeModeOpt = "logprobs",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Refusal rate per safety category (trained vs held-out); over-refusal on xstest:safe."""
    from persona_probe.evals.safety import SafetyConfig, load_safety_prompts, run_safety_eval
    from persona_probe.models import load_subject

    dets = tuple(d.strip() for d in detectors.split(",") if d.strip())
    cfg = SafetyConfig(tuple(c.strip() for c in trained.split(",") if c.strip()), dets,
                       per_category, max_new_tokens, seed=seed)
    prompts = load_safety_prompts(source)
    subject = load_subject(model, adapter=adapter)
    j = _judge(judge, subject, out, judge_url, judge_key_env, judge_mode) \
        if "judge" in dets else None
    s = run_safety_eval(subject, prompts, cfg, j, out)
    for c, r in s["per_category"].items():
        for d in dets:
            _show(r[f"refusal_{d}"], f"{c[:30]} ({r['split']}) {d}")
    for sp, r in s["per_split"].items():
        for d in dets:
            _show(r[f"refusal_{d}"], f"ALL {sp} {d}")


@eval_app.command("projectability")
@_clean_errors
def eval_projectability(
    model_dir: Annotated[Path, typer.Argument(help="Diagnostic results of the finetuned "
                                                   "model.")],
    base_dir: Annotated[Path, typer.Argument(help="Diagnostic results of the base model.")],
    persona: Annotated[str, typer.Option(help="Intended dimension (the constitution).")],
    trained: Annotated[str, typer.Option(help="Comma-separated trained contexts.")],
    held_out: Annotated[str, typer.Option(help="Comma-separated held-out contexts.")],
    mode: Annotated[Optional[str], typer.Option()] = None,
    out: Annotated[Optional[Path], typer.Option()] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Projectability and consistency from two stored diagnostic runs."""
    from persona_probe.evals.projectability import projectability_from_dirs

    s = projectability_from_dirs(model_dir, base_dir, persona,
                                 [c.strip() for c in trained.split(",") if c.strip()],
                                 [c.strip() for c in held_out.split(",") if c.strip()],
                                 mode, seed, out)
    _show(s["projectability"], "projectability")
    _show(s["consistency"], "consistency")
    for k, e in s["delta_margin"].items():
        _show(e, f"delta margin {k}")


@eval_app.command("agreement")
@_clean_errors
def eval_agreement(
    out: _OutOpt,
    judge: _JudgeOpt = "self", model: _ModelOpt = "smollm2-135m-instruct",
    sets: Annotated[str, typer.Option()] = "dna_gpt4,dna_llama2,xstest_gpt4",
    n_per_set: Annotated[int, typer.Option()] = 100,
    judge_url: _JudgeUrlOpt = None, judge_key_env: _JudgeKeyOpt = "OPENAI_API_KEY",
    judge_mode: _JudgeModeOpt = "logprobs", seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Refusal judge and keyword detector vs human labels (accuracy, Cohen's kappa)."""
    from persona_probe.datasets import shared_data_dir
    from persona_probe.evals.agreement import run_agreement
    from persona_probe.models import load_subject

    root = shared_data_dir()
    if root is None:
        raise PersonaProbeError("judge agreement needs ../shared/data (or $PERSONA_PROBE_DATA)")
    subject = load_subject(model) if judge == "self" else None
    j = _judge(judge, subject, out, judge_url, judge_key_env, judge_mode)
    s = run_agreement(j, [x.strip() for x in sets.split(",")], root, n_per_set, seed=seed,
                      out=out)
    for d, m in s["pooled"].items():
        if d == "judge_raw_auc":   # an estimate beside the detectors, not a detector
            _show(m, "judge raw-score AUC")
        elif "accuracy" in m:
            _show(m["accuracy"], f"{d} accuracy (declined {m['declined']})")
            _show(m["kappa"], f"{d} Cohen's kappa")
        else:
            typer.echo(f"{d}: declined all {m['declined']} responses")


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
