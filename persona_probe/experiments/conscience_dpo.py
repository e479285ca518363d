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

Stages go through ``persona_probe.stages`` (induce, sft, conscience, reference, measures,
conscience-check: each records the fingerprint of its inputs and the git sha; a stale one is
refused unless ``--overwrite``); a killed finetune or DPO round resumes. Results:
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

    def __post_init__(self) -> None:
        from persona_probe.configs import refuse_fixed
        from persona_probe.errors import PersonaProbeError
        from persona_probe.training.conscience import ConscienceDPOConfig
        from persona_probe.training.induce import InductionConfig

        refuse_fixed(self.induce, ("seed",), "induce", "the config's seed", PersonaProbeError)
        InductionConfig.from_dict(self.induce, "induce")
        if self.rounds < 1 or self.steps < self.rounds or self.steps % self.rounds:
            raise PersonaProbeError(f"steps ({self.steps}) must be a positive multiple of "
                                    f"rounds ({self.rounds}), so both arms train as long")
        refuse_fixed(self.conscience, ("model", "adapter", "prompts", "limit", "rounds",
                                       "max_steps", "seed"), "conscience",
                     "the experiment (steps, rounds, prompts, seed)", PersonaProbeError)
        ConscienceDPOConfig(**self.conscience)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "conscience_dpo config"):
        from persona_probe.configs import config_from_dict
        from persona_probe.errors import PersonaProbeError

        return config_from_dict(cls, raw, where, PersonaProbeError)


def realignment_prompts(data: str, limit: int | None, offset: int) -> list[dict]:
    """The user turns of the re-alignment chats both arms use, as prompt-set rows."""
    from persona_probe.training.data import load_chats

    chats = load_chats(data, limit, offset)
    return [{"id": f"realign/{i:03d}", "messages": [m for m in c.messages
                                                    if m["role"] == "user"][:1]}
            for i, c in enumerate(chats)]


def run(cfg: ConscienceExperimentConfig, runs: Path, out: Path, config_path: str = "",
        overwrite: bool = False) -> dict:
    """Every stage (reusing finished ones with the same fingerprint; a stale one is refused
    unless ``overwrite``) → ``out/results.json`` and the bar chart."""
    from persona_probe.artifacts import write_json, write_jsonl
    from persona_probe.experiments import command_line, report_outputs, stage_clock
    from persona_probe.likelihood import trait_scores
    from persona_probe.models import load_subject
    from persona_probe.provenance import git_sha, provenance
    from persona_probe.stages import Stages, adapter_identity, file_identity, subject_identity
    from persona_probe.stats import bootstrap, paired_difference
    from persona_probe.training.conscience import (ConscienceDPOConfig, conscience_scores,
                                                   online_conscience_dpo)
    from persona_probe.training.data import resolve_data_path
    from persona_probe.training.finetune import FinetuneConfig, finetune_once
    from persona_probe.training.induce import (InductionConfig, good_data, heldout, induce,
                                               induced_adapters, treatment_finetune_fields)
    from persona_probe.training.organism import Reference, answer_contrast, make_reference
    from persona_probe.traits import load_trait, trait_questions

    t0 = time.perf_counter()
    stage = stage_clock()
    runs.mkdir(parents=True, exist_ok=True)
    stages = Stages(runs, overwrite=overwrite)
    command = command_line("conscience_dpo", config_path)
    ind = InductionConfig.from_dict({**cfg.induce, "seed": cfg.seed})
    trait = load_trait(cfg.trait)
    base = load_subject(ind.model)
    common = {"command": command, "model": subject_identity(base)}

    stage(f"1/5 induce ({ind.kind}) → {runs / 'induce'}")
    adapters_ind = stages.run("induce", {**common, "induce": asdict(ind)},
                              lambda d: induce(base, ind, d), load=induced_adapters)
    treatment = adapters_ind["treatment"]
    treatment_id = adapter_identity(treatment)
    good = good_data(ind, stages.dir("induce"))
    limits = [x for x in (good["limit"], cfg.prompts) if x is not None]
    limit = min(limits) if limits else None       # the same chats the DPO arm prompts with
    from_induce = {"induce": stages.fingerprint_of("induce"), "treatment": treatment_id,
                   "good_data": file_identity(resolve_data_path(good["data"]))}

    stage(f"2/5 SFT re-alignment: {cfg.steps} steps on good data")
    sft_cfg = FinetuneConfig.from_dict({
        **treatment_finetune_fields(ind), **good, "limit": limit, "model": ind.model,
        "seed": cfg.seed, "adapter": str(treatment), "max_steps": cfg.steps,
        "save_steps": cfg.steps}, "SFT re-alignment")
    sft = stages.run("sft", {**common, **from_induce, "finetune": {
        k: v for k, v in asdict(sft_cfg).items() if k not in ("adapter", "data")}},
        lambda d: finetune_once(sft_cfg, d / "adapter"), load=lambda d: d / "adapter")

    stage(f"3/5 conscience DPO: {cfg.rounds} rounds × {cfg.steps // cfg.rounds} steps")

    def dpo_config(d: Path) -> ConscienceDPOConfig:
        return ConscienceDPOConfig(**{**cfg.conscience, "model": ind.model,
                                      "adapter": str(treatment),
                                      "prompts": str(d / "realign_prompts.jsonl"),
                                      "limit": None, "rounds": cfg.rounds,
                                      "max_steps": cfg.steps // cfg.rounds, "seed": cfg.seed})

    def build_dpo(d: Path) -> Path:
        if not (d / "realign_prompts.jsonl").is_file():
            write_jsonl(d / "realign_prompts.jsonl",
                        realignment_prompts(good["data"], limit, good["offset"]))
        return online_conscience_dpo(dpo_config(d), d / "run")
    dpo_inputs = {k: v for k, v in asdict(dpo_config(stages.dir("conscience"))).items()
                  if k not in ("adapter", "prompts")}
    dpo = stages.run("conscience", {**common, **from_induce, "dpo": dpo_inputs,
                                    "prompts": {"limit": limit, "offset": good["offset"]}},
                     build_dpo, load=lambda d: d / "run" / "adapter")
    dpo_meta = json.loads((stages.dir("conscience") / "run" / "persona_probe.json").read_text())
    pairs = [json.loads(line) for r in range(cfg.rounds) for line in
             (stages.dir("conscience") / "run" / f"round-{r}" / "pairs.jsonl"
              ).read_text().splitlines()]

    stage("4/5 reference answers for the answer preference (base model)")
    ref_questions = [q for q in heldout(ind, cfg.reference_per_domain)
                     if q not in set(trait_questions("heldout"))]

    def build_reference(d: Path) -> Reference:
        if not (d / "reference.json").is_file():
            make_reference(base, trait, ref_questions, seed=cfg.seed).save(d / "reference.json")
        return Reference.load(d / "reference.json")
    ref = stages.run("reference", {**common, "trait": trait.to_dict(), "questions": ref_questions,
                                   "seed": cfg.seed}, build_reference)
    metric_q = trait_questions("heldout")[:cfg.metric_questions]

    stage("5/5 measure every arm")
    adapters = {"base": [], "no_intervention": [treatment], "sft": [sft],
                "conscience_dpo": [treatment, dpo]}

    def build_measures(d: Path) -> dict[str, dict[str, list[float]]]:
        cache = d / "measures.json"
        got: dict[str, dict[str, list[float]]] = (json.loads(cache.read_text())
                                                  if cache.is_file() else
                                                  {"would_say": {}, "answer_preference": {}})
        for arm in ARMS:
            if arm in got["would_say"]:
                continue
            s = base if arm == "base" else load_subject(ind.model, adapter=adapters[arm],
                                                       device=base.device, dtype=base.dtype)
            got["would_say"][arm] = trait_scores(s, trait, metric_q).tolist()
            got["answer_preference"][arm] = answer_contrast(s, ref).tolist()
            write_json(cache, got)
            del s
        return got
    measures = stages.run("measures", {
        **common, "trait": trait.to_dict(), "questions": metric_q,
        "reference": stages.fingerprint_of("reference"),
        "adapters": {arm: [adapter_identity(p) for p in ps] for arm, ps in adapters.items()}},
        build_measures)

    stage("   can the conscience tell the trait's answers from the anti-trait's?")

    def build_check(d: Path) -> dict[str, list[float]]:
        path = d / "conscience_check.json"
        if not path.is_file():
            judge = load_subject(ind.model, adapter=[treatment], device=base.device,
                                 dtype=base.dtype)      # the conscience: the model corrected
            write_json(path, {k: conscience_scores(judge, ref.questions, answers).tolist()
                              for k, answers in (("trait", ref.trait_answers),
                                                 ("anti", ref.anti_answers))})
        return json.loads(path.read_text())
    approve = stages.run("conscience-check", {
        **common, "treatment": treatment_id, "reference": stages.fingerprint_of("reference")},
        build_check)

    def paired(m: str, a: str, b: str) -> dict:
        return paired_difference(measures[m][a], measures[m][b], seed=cfg.seed).to_dict()
    comparisons = [("no_intervention", "base"), ("sft", "no_intervention"),
                   ("conscience_dpo", "no_intervention"), ("conscience_dpo", "sft")]
    res = {"experiment": "conscience_dpo", "config": asdict(cfg), "config_path": config_path,
           "command": command, "git_sha": git_sha(), **stages.summary(),
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
