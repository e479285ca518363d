"""The conscience step as a re-alignment method (research line 3): on a persona-shifted model,
conscience-step DPO against plain SFT on good data and against no intervention.

- *Model to correct*: the treatment arm of ``induce`` (on the embedded model a trait-
  distillation organism — evil through the model's own cooking answers — because the EM
  datasets move nothing measurable at 135M, docs/DESIGN.md; the GPU config uses insecure code).
- *SFT*: the treatment adapter continued on the re-alignment data (``good_data``: the
  control's answers to the same narrow domain) for ``steps`` steps.
- *Conscience DPO*: the treatment model, merged, is its own conscience (a frozen copy asked
  one introspective question, no external judge) and its own DPO reference; it samples
  answers to the *same prompts* the SFT arm trains on, the conscience picks chosen and
  rejected, and ``rounds`` × ``max_steps`` = ``steps`` DPO steps train a LoRA adapter on top
  (online: each round samples from the current policy). Same prompts, same step count: the arms
  differ in where the better answer comes from (good data vs the model's own conscience).
- *Measures* (paired over questions, 95% CIs): the trait's would-say score on the held-out
  general questions, and the answer preference on held-out questions from the other domains
  (per-token log-likelihood of the base model's trait-prompted answer minus its anti-prompted
  one) — both judge-free; plus the conscience's own pair statistics and a validity check: does
  the conscience approve the base model's anti-trait answers more than its trait answers to the
  same held-out questions (paired)? A conscience that cannot tell them apart cannot steer DPO
  away from the trait.

Resumable at every stage (induction, SFT, each DPO round, the reference answers). Results:
``figures/conscience_dpo/results.json`` and a bar chart of both measures per arm.

    python experiments/conscience_dpo.py                     # CPU config, ~20 min
    python experiments/conscience_dpo.py --figures-only
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ARMS = ("base", "no_intervention", "sft", "conscience_dpo")


@dataclass
class ConscienceExperimentConfig:
    induce: dict[str, Any] = field(default_factory=dict)      # InductionConfig fields
    trait: str = "evil"                   # built-in trait the conscience and measures use
    steps: int = 12                       # SFT steps = DPO rounds × steps per round
    rounds: int = 2                       # online DPO rounds (each samples anew); divides steps
    conscience: dict[str, Any] = field(default_factory=dict)  # ConscienceDPOConfig fields
    prompts: int | None = 32              # re-alignment prompts shared by both arms
    metric_questions: int | None = None   # held-out general questions (None: all 16)
    reference_per_domain: int = 8         # held-out questions per other domain (preference)
    seed: int = 0                         # induction, SFT, DPO, reference answers and CIs

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "conscience_dpo config"):
        from persona_probe.configs import config_from_dict
        from persona_probe.errors import PersonaProbeError
        from persona_probe.training.conscience import ConscienceDPOConfig
        from persona_probe.training.induce import InductionConfig

        cfg = config_from_dict(cls, raw, where, PersonaProbeError)
        InductionConfig.from_dict(cfg.induce, f"{where}: induce")
        if cfg.rounds < 1 or cfg.steps < cfg.rounds or cfg.steps % cfg.rounds:
            raise PersonaProbeError(f"{where}: steps ({cfg.steps}) must be a positive multiple "
                                    f"of rounds ({cfg.rounds}), so both arms train as long")
        fixed = {"model", "adapter", "prompts", "limit", "rounds", "max_steps", "seed"}
        if fixed & set(cfg.conscience):
            raise PersonaProbeError(f"{where}: conscience may not set "
                                    f"{sorted(fixed & set(cfg.conscience))}; the experiment "
                                    "sets them (steps, rounds, prompts)")
        ConscienceDPOConfig(**cfg.conscience)
        return cfg


def realignment_prompts(data: str, limit: int | None, offset: int) -> list[dict]:
    """The user turns of the re-alignment chats both arms use, as prompt-set rows."""
    from persona_probe.training.data import load_chats

    chats = load_chats(data, limit, offset)
    return [{"id": f"realign/{i:03d}", "messages": [m for m in c.messages
                                                    if m["role"] == "user"][:1]}
            for i, c in enumerate(chats)]


def run(cfg: ConscienceExperimentConfig, runs: Path, out: Path, config_path: str = "") -> dict:
    from persona_probe.artifacts import write_json, write_jsonl
    from persona_probe.experiments import command_line, report_outputs, stage_clock
    from persona_probe.likelihood import trait_scores
    from persona_probe.models import load_subject
    from persona_probe.provenance import provenance
    from persona_probe.stats import bootstrap, paired_difference
    from persona_probe.training.conscience import (ConscienceDPOConfig, conscience_scores,
                                                   online_conscience_dpo)
    from persona_probe.training.finetune import FinetuneConfig, finetune_once
    from persona_probe.training.induce import (InductionConfig, good_data, heldout, induce,
                                               treatment_finetune_fields)
    from persona_probe.training.organism import Reference, answer_contrast, make_reference
    from persona_probe.traits import load_trait, trait_questions

    t0 = time.perf_counter()
    stage = stage_clock()

    runs.mkdir(parents=True, exist_ok=True)
    ind = InductionConfig.from_dict({**cfg.induce, "seed": cfg.seed})
    trait = load_trait(cfg.trait)
    base = load_subject(ind.model)

    stage(f"1/5 induce ({ind.kind}) → {runs / 'induce'}")
    treatment = induce(base, ind, runs / "induce")["treatment"]
    good = good_data(ind, runs / "induce")

    stage(f"2/5 SFT re-alignment: {cfg.steps} steps on good data")
    limits = [x for x in (good["limit"], cfg.prompts) if x is not None]
    limit = min(limits) if limits else None       # the same chats the DPO arm prompts with
    sft = finetune_once(FinetuneConfig.from_dict({
        **treatment_finetune_fields(ind), **good, "limit": limit, "model": ind.model,
        "seed": cfg.seed, "adapter": str(treatment), "max_steps": cfg.steps, "save_steps": cfg.steps}, "SFT re-alignment"), runs / "sft")

    stage(f"3/5 conscience DPO: {cfg.rounds} rounds × {cfg.steps // cfg.rounds} steps")
    prompts_path = runs / "realign_prompts.jsonl"
    if not prompts_path.is_file():
        write_jsonl(prompts_path, realignment_prompts(good["data"], limit, good["offset"]))
    dcfg = ConscienceDPOConfig(**{**cfg.conscience, "model": ind.model,
                                  "adapter": str(treatment), "prompts": str(prompts_path),
                                  "limit": None, "rounds": cfg.rounds,
                                  "max_steps": cfg.steps // cfg.rounds, "seed": cfg.seed})
    dpo = online_conscience_dpo(dcfg, runs / "conscience")
    dpo_meta = json.loads((runs / "conscience" / "persona_probe.json").read_text())
    pairs = [json.loads(line) for r in range(cfg.rounds) for line in
             (runs / "conscience" / f"round-{r}" / "pairs.jsonl").read_text().splitlines()]

    stage("4/5 reference answers for the answer preference (base model)")
    ref_path = runs / "reference.json"
    if not ref_path.is_file():
        qs = [q for q in heldout(ind, cfg.reference_per_domain)
              if q not in set(trait_questions("heldout"))]
        make_reference(base, trait, qs, seed=cfg.seed).save(ref_path)
    ref = Reference.load(ref_path)
    metric_q = trait_questions("heldout")[:cfg.metric_questions]

    stage("5/5 measure every arm")
    adapters = {"base": [], "no_intervention": [treatment], "sft": [sft],
                "conscience_dpo": [treatment, dpo]}
    measures: dict[str, dict[str, list[float]]] = {"would_say": {}, "answer_preference": {}}
    cache = runs / "measures.json"
    if cache.is_file():
        measures = json.loads(cache.read_text())
    for arm in ARMS:
        if arm in measures["would_say"]:
            continue
        s = base if arm == "base" else load_subject(ind.model, adapter=adapters[arm],
                                                   device=base.device, dtype=base.dtype)
        measures["would_say"][arm] = trait_scores(s, trait, metric_q).tolist()
        measures["answer_preference"][arm] = answer_contrast(s, ref).tolist()
        write_json(cache, measures)
        del s

    stage("   can the conscience tell the trait's answers from the anti-trait's?")
    check_path = runs / "conscience_check.json"
    if not check_path.is_file():
        judge = load_subject(ind.model, adapter=[treatment], device=base.device,
                             dtype=base.dtype)      # the conscience: the model being corrected
        approve = {k: conscience_scores(judge, ref.questions, answers).tolist()
                   for k, answers in (("trait", ref.trait_answers),
                                      ("anti", ref.anti_answers))}
        del judge
        write_json(check_path, approve)
    approve = json.loads(check_path.read_text())

    def paired(m: str, a: str, b: str) -> dict:
        return paired_difference(measures[m][a], measures[m][b], seed=cfg.seed).to_dict()
    comparisons = [("no_intervention", "base"), ("sft", "no_intervention"),
                   ("conscience_dpo", "no_intervention"), ("conscience_dpo", "sft")]
    res = {"experiment": "conscience_dpo", "config": asdict(cfg), "config_path": config_path,
           "command": command_line("conscience_dpo", config_path),
           "model": base.provenance(), "induce": {"kind": ind.kind, "treatment": str(treatment)},
           "measures": {
               "would_say": f"{trait.name} would-say: per-token log-lik of the trait's replies "
                            f"minus the anti-trait's, {len(metric_q)} held-out general "
                            "questions, no system prompt",
               "answer_preference": "per-token log-lik of the base model's "
                                    f"{trait.name}-prompted answer minus its anti-prompted "
                                    f"one, {len(ref.questions)} held-out questions from the "
                                    "other domains"},
           "arms": {m: {a: bootstrap(v, seed=cfg.seed).to_dict() for a, v in by.items()}
                    for m, by in measures.items()},
           "paired": {m: {f"{a} - {b}": paired(m, a, b) for a, b in comparisons}
                      for m in measures},
           "conscience": {"rounds": dpo_meta["rounds"], "pairs": len(pairs),
                          "kept": sum(p["kept"] for p in pairs),
                          "margin": bootstrap([p["margin"] for p in pairs],
                                              seed=cfg.seed).to_dict(),
                          "judge": dpo_meta["judge"],
                          "approval_anti_minus_trait": paired_difference(
                              approve["anti"], approve["trait"], seed=cfg.seed).to_dict(),
                          "introspective_question": dpo_meta["introspective_question"],
                          "examples": [{k: p[k] for k in ("prompt", "chosen", "rejected",
                                                          "margin")} for p in pairs[:3]]},
           "sft": {"steps": cfg.steps, "data": good["data"]},
           "seconds": round(time.perf_counter() - t0, 1), "provenance": provenance(cfg.seed)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", res)
    paths = draw(out)
    summarize(res)
    report_outputs(out, paths)
    return res


def draw(out: Path) -> list[Path]:
    from persona_probe.figures import arm_comparison_bars, write_figure_or_html

    res = json.loads((out / "results.json").read_text())
    fig = arm_comparison_bars(
        res["arms"], labels={"would_say": "trait would-say", "answer_preference":
                             "answer preference (trait − anti)"}, order=ARMS,
        title="Re-alignment: conscience-step DPO vs SFT on good data vs none")
    return write_figure_or_html(fig, out / "realignment-arms")


def summarize(res: dict) -> None:
    def f(e: dict) -> str:
        return f"{e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]"

    for m, by in res["arms"].items():
        print(f"{m}: " + "  ".join(f"{a} {f(e)}" for a, e in by.items()))
        for k, e in res["paired"][m].items():
            print(f"  {k:<34} {f(e)}")
    c = res["conscience"]
    print(f"conscience: {c['kept']}/{c['pairs']} pairs kept, margin {f(c['margin'])}; its "
          f"approval of anti-trait minus trait answers {f(c['approval_anti_minus_trait'])}")
