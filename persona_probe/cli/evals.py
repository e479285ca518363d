"""Evaluations: the ``eval`` sub-app (em, persona, diagnostic, safety, projectability,
agreement), each writing items.jsonl and summary.json to --out, and ``train-probe-judge``,
which fits a judge the evals can use (``--judge probe:DIR``).

The commands that measure a subject (em, persona, diagnostic, safety) parse their options into
the eval's config and call ``evals.registry.run_eval``, the path a script or recipe takes, so
the CLI and the library cannot drift apart; ``diagnostic --validate`` calls
``evals.diagnostic.validate_diagnostic``. Projectability and agreement do not measure a subject
and call their own library functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from persona_probe.cli import _clean_errors, app
from persona_probe.errors import PersonaProbeError


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


eval_app = typer.Typer(no_args_is_help=True,
                       help="Evaluations: em, persona, diagnostic, safety, projectability, "
                            "agreement. Each writes items.jsonl and summary.json to --out.")


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


def _judge_options(url: Optional[str], key_env: str, mode: str) -> dict:
    """The --judge-url/--judge-key-env/--judge-mode options as ``make_judge`` options."""
    return {"base_url": url, "api_key_env": key_env, "mode": mode}


def _judge(spec: str, subject, out: Path, url: Optional[str], key_env: str, mode: str):
    """A judge for ``eval agreement`` (not a subject eval; the others build theirs in the eval
    registry's adapters from the same options)."""
    from persona_probe.evals.judges import make_judge

    return make_judge(spec, subject, cache=out / "judge_cache.sqlite",
                      **_judge_options(url, key_env, mode))


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
    from persona_probe.evals.registry import EMEvalConfig, run_eval
    from persona_probe.models import load_subject

    cfg = EMEvalConfig(samples_per_paraphrase=samples, max_new_tokens=max_new_tokens,
                       seed=seed, renormalized=renormalized, questions=questions, judge=judge,
                       judge_options=_judge_options(judge_url, judge_key_env, judge_mode))
    s = run_eval("em", load_subject(model, adapter=adapter), cfg, out)
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
    from persona_probe.evals.registry import PersonaEvalConfig, run_eval
    from persona_probe.models import load_subject

    cfg = PersonaEvalConfig(files=tuple(str(f) for f in files), limit=limit, system=system,
                            seed=seed)
    s = run_eval("persona", load_subject(model, adapter=adapter), cfg, out)
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
    validate: Annotated[bool, typer.Option(
        "--validate", help="The diagnostic's own validity check instead: under each "
                           "dimension's constitution as a system prompt, does that dimension "
                           "move more than the others (vs no system prompt)?")] = False,
) -> None:
    """Ethical persona diagnostic: a profile per context with bootstrap CIs."""
    from persona_probe.evals.diagnostic import validate_diagnostic
    from persona_probe.evals.registry import DiagnosticEvalConfig, run_eval
    from persona_probe.models import load_subject

    names = [d.strip() for d in dimensions.split(",") if d.strip()]
    if validate:
        if system or category:
            raise PersonaProbeError("--validate sets its own contexts (one constitution per "
                                    "dimension); drop --system and --category")
        val = validate_diagnostic(load_subject(model, adapter=adapter), names, mode, source,
                                  anthropic_limit, out, seed)
        for d, v in val.items():
            m, o = v["margin"], v["intended_shift"]
            typer.echo(f"{d:>17}: margin {m['mean']:+.3f} [{m['lo']:+.3f}, {m['hi']:+.3f}] "
                       f"under its constitution (shift minus the others' shift), own shift "
                       f"{o['mean']:+.3f} [{o['lo']:+.3f}, {o['hi']:+.3f}] -> "
                       f"{'seen' if v['passes'] else 'NOT seen'}")
        seen = sum(v["passes"] for v in val.values())
        typer.echo(f"the diagnostic sees {seen} of {len(val)} dimensions")
        return
    cfg = DiagnosticEvalConfig(dimensions=tuple(names), mode=mode, source=source,
                               anthropic_limit=anthropic_limit, systems=tuple(system or ()),
                               categories=tuple(category or ()), seed=seed)
    s = run_eval("diagnostic", load_subject(model, adapter=adapter), cfg, out)
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
    from persona_probe.evals.registry import SafetyEvalConfig, run_eval
    from persona_probe.models import load_subject

    dets = tuple(d.strip() for d in detectors.split(",") if d.strip())
    cfg = SafetyEvalConfig(
        trained_categories=tuple(c.strip() for c in trained.split(",") if c.strip()),
        detectors=dets, per_category=per_category, max_new_tokens=max_new_tokens, seed=seed,
        prompts=source, judge=judge,
        judge_options=_judge_options(judge_url, judge_key_env, judge_mode))
    s = run_eval("safety", load_subject(model, adapter=adapter), cfg, out)
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
