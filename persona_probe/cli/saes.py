"""Sparse autoencoders: ``train-sae``, ``sae-metrics``, ``sae-info``, ``import-sae``, and what
to do with one: ``rank-latents``, ``dashboards``, ``screen-latents``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from persona_probe.cli import _clean_errors, _overrides, _show_check, app
from persona_probe.errors import PersonaProbeError


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
    from persona_probe.sae import evaluate_sae, subject_of_sae

    subject = subject_of_sae(path) if ce_chats > 0 else None
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
    from persona_probe.latents import decompose, diff_subjects, top_examples, trait_contrast
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

        ranking, shown_items = trait_contrast(s, base, load_trait(trait), items, "response")
        shown_subject = base
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
