"""Directions in the residual stream: build a persona ``vector``, ``import-vector`` /
``export-vector`` in the persona_vectors layout, and ``steer`` along one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from persona_probe.cli import _clean_errors, _show_check, app
from persona_probe.errors import PersonaProbeError


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
        from persona_probe.evals.probe_judge import load_probe_judges
        from persona_probe.traits import trait_questions

        named = load_probe_judges([x.strip() for x in judges.split(",") if x.strip()],
                                  coherence=False)
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
