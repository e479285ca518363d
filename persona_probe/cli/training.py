"""Training: ``finetune`` (SFT), ``screen`` training data by persona-vector projection,
constitutional AI (``cai``), conscience ``dpo``, and a trait-distillation ``organism``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from persona_probe.cli import _clean_errors, _overrides, app


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


SET_HELP = ("Override a config field: --set key=value (repeatable); `persona-probe fields NAME` "
            "lists the fields.")


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
