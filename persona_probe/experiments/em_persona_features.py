"""Misaligned persona features end to end (research line 1): induce a persona shift, find the
SAE latents that carry it by model diffing, test whether they and the persona vector *control*
it, and re-align the model with a few SFT steps on good data.

Stages go through ``persona_probe.stages`` (each output records the fingerprint of its inputs
and the git sha; a stale one is refused, ``--overwrite`` rebuilds it; a killed finetune resumes
from its checkpoint):

1. induce             treatment and control finetunes (``persona_probe.training.induce``): on
                      CPU a trait-distillation organism (evil through 64 cooking answers vs its
                      kind control); the GPU config uses the EM datasets (insecure vs secure).
2. vector             the difference-in-means persona vector of the trait at every layer (base).
3. diff-items, diff   residuals at the SAE's hook over the base model's own answers to
                      held-out questions, through base, treatment and control: latents ranked
                      by Δ mean activation (treatment − base), each with its Δ in the control
                      and its decoder's cosine with the persona vector; top activating
                      examples; the persona vector's mean projection.
4. steer-base         dose-response on the *base* model: the top latents (one SAE target) and
                      the persona vector against equal-norm random directions; each also
                      ablated. Metric: the judge-free would-say trait measure on the team's 16
                      held-out general questions.
5. ablate-treatment   the same targets ablated in the *treatment* model (latents in latent mode
                      at the SAE's hook; the vector and its random control at every layer): how
                      much of the treatment − base gap survives when both models are ablated
                      the same way (a difference in differences: an ablation moves the base too).
6. steer-generations  (``steer_generations`` > 0) what the base writes under stage 4's edits:
                      sampled replies judged by the probe judges, with the coherence rule.
7. realign            the treatment adapter continued on good data it never saw, the trait
                      measured every few steps.
8. figures            latent-shift bars, dose-response, ablation, re-alignment (HTML; PNG where
                      kaleido finds a Chromium).

    python experiments/em_persona_features.py                        # CPU config, ~15 min
    python experiments/em_persona_features.py --config experiments/configs/em_persona_features-qwen2.5-7b-gpu.json
    python experiments/em_persona_features.py --figures-only         # re-draw from results
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class EMPersonaFeaturesConfig:
    induce: dict[str, Any] = field(default_factory=dict)   # InductionConfig fields
    trait: str = "evil"                    # built-in trait measured and steered
    sae: str = "shipped"                   # "shipped", a directory, or a sae-lens release/id
    vector_questions: int | None = 12      # extraction questions for the persona vector
    diff_per_domain: int = 8               # held-out questions per other domain for diffing
    diff_max_new_tokens: int = 32          # length of the base's answers to those questions
    metric_questions: int | None = None    # first N of the 16 held-out general questions
    top_latents: int = 10                  # rows kept in the ranking table and bar chart
    steer_latents: int = 3                 # the top k latents steered/ablated as one target
    alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.4)  # steering α (units of r̄_L); with 0.0
    random_controls: int = 1               # equal-norm random directions per target
    ablation_mode: str = "directional"     # directional | mean (to the base model's level)
    realign_steps: int = 12                # SFT steps of the re-alignment on good data
    realign_every: int = 4                 # trait measured (and checkpointed) every N steps
    seed: int = 0                          # induction, vector, diffing answers, controls, CIs
    dtype: str | None = None               # scoring, generation and LoRA; None = the model's
    #                                        default (float32 on CPU, as the committed run)
    # what the base *writes* under the steering stage's edits: replies sampled per metric
    # question for each target and its random controls at every positive α (and unsteered),
    # judged by probe:harmful and probe:refusal with the shipped coherence rule (0: none)
    steer_generations: int = 0
    generation_tokens: int = 64            # length of each sampled reply (temperature 1)
    coherence_margin: float = 0.1          # usable α: coherent fraction within this of α 0's

    def __post_init__(self) -> None:
        from persona_probe.configs import refuse_fixed
        from persona_probe.errors import PersonaProbeError

        self.alphas = tuple(float(a) for a in self.alphas)
        if 0.0 not in self.alphas:
            raise PersonaProbeError("alphas must include 0.0 (the unsteered model)")
        if self.steer_latents < 1 or self.realign_every < 1:
            raise PersonaProbeError("steer_latents and realign_every must be >= 1")
        if self.steer_generations < 0:
            raise PersonaProbeError("steer_generations must be >= 0 (0: none)")
        if self.steer_generations:        # the generation settings matter only when sampled
            if self.generation_tokens < 1:
                raise PersonaProbeError("generation_tokens must be >= 1")
            if not 0 < self.coherence_margin < 1:
                raise PersonaProbeError("coherence_margin is a share of replies, in (0, 1)")
            if not any(a > 0 for a in self.alphas):
                raise PersonaProbeError("steer_generations needs a positive alpha to sample at")
        refuse_fixed(self.induce, ("seed",), "induce", "the config's seed", PersonaProbeError)
        if self.dtype is not None:
            from persona_probe.models import parse_dtype
            parse_dtype(self.dtype)                # refuse a misspelt dtype before any work
            set_here = {f.get("dtype") for f in _finetunes(self.induce)} - {None}
            if any(parse_dtype(d) != parse_dtype(self.dtype) for d in set_here):
                raise PersonaProbeError(
                    f"a finetune in induce sets dtype {sorted(set_here)} but the config's dtype "
                    f"is {self.dtype!r}: the arms would be trained in one precision and measured "
                    "in another; drop the finetune's dtype")
        self.induction("induce")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "em_persona_features config"):
        from persona_probe.configs import config_from_dict
        from persona_probe.errors import PersonaProbeError

        return config_from_dict(cls, raw, where, PersonaProbeError)

    def induction(self, where: str = "induce"):
        """The induction config, with ``dtype`` given to every finetune that does not set its
        own (so the organism or EM arms train in the precision the rest is measured in)."""
        from persona_probe.training.induce import InductionConfig

        raw = {**self.induce, "seed": self.seed}
        if self.dtype is not None:
            if raw.get("kind", "organism") == "organism":
                org = dict(raw.get("organism", {}))
                org["finetune"] = {"dtype": self.dtype, **org.get("finetune", {})}
                raw["organism"] = org
            else:
                raw["em"] = {arm: {"dtype": self.dtype, **fields}
                             for arm, fields in raw.get("em", {}).items()}
        return InductionConfig.from_dict(raw, where)


def _finetunes(induce: dict[str, Any]) -> list[dict[str, Any]]:
    """The finetune field dicts an induce block holds (the organism's, or each EM arm's)."""
    if induce.get("kind", "organism") == "organism":
        return [induce.get("organism", {}).get("finetune", {})]
    return list(induce.get("em", {}).values())


def run(cfg: EMPersonaFeaturesConfig, runs: Path, out: Path, config_path: str = "",
        overwrite: bool = False) -> dict:
    """Every stage (reusing finished ones with the same fingerprint; a stale one is refused
    unless ``overwrite``) → ``out/results.json`` and the figures."""
    import numpy as np

    from persona_probe.artifacts import write_json, write_jsonl
    from persona_probe.directions import Direction, persona_vector
    from persona_probe.dose_response import DoseResponseConfig, ablation_gaps, dose_response
    from persona_probe.experiments import command_line, report_outputs, stage_clock
    from persona_probe.interventions import SAELatents
    from persona_probe.likelihood import trait_scores
    from persona_probe.models import load_subject
    from persona_probe.monitor import probe_set_from_answers
    from persona_probe.prompts import iter_jsonl, load_jsonl
    from persona_probe.provenance import git_sha, provenance
    from persona_probe.sae.io import load_sae
    from persona_probe.stages import Stages, adapter_identity, sae_identity, subject_identity
    from persona_probe.stats import bootstrap, paired_difference
    from persona_probe.training.callbacks import periodic_metric
    from persona_probe.training.finetune import FinetuneConfig, finetune_once
    from persona_probe.training.induce import (good_data, heldout, induce, induced_adapters,
                                               treatment_finetune_fields)
    from persona_probe.traits import load_trait, trait_questions

    t0 = time.perf_counter()
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(runs, overwrite=overwrite)
    command = command_line("em_persona_features", config_path)
    ind = cfg.induction()
    trait = load_trait(cfg.trait)
    base = load_subject(ind.model, dtype=cfg.dtype)
    sae = load_sae(cfg.sae, device=str(base.device), subject=base)
    hook = sae.cfg.metadata.hook_name
    layer = int(hook.split(".")[1])
    metric_questions = trait_questions("heldout")[:cfg.metric_questions]
    common = {"command": command, "model": subject_identity(base)}
    measure = {"trait": trait.name, "questions": metric_questions}

    def would_say(subject):
        return trait_scores(subject, trait, metric_questions)

    stage = stage_clock()
    stage(f"1/8 induce ({ind.kind}) → {runs / 'induce'}")
    adapters = stages.run("induce", {**common, "induce": asdict(ind)},
                          lambda d: induce(base, ind, d), load=induced_adapters)
    arm_ids = {arm: adapter_identity(p) for arm, p in adapters.items()}
    subjects = {"base": base, **{arm: load_subject(base.spec, adapter=p, device=base.device,
                                                   dtype=base.dtype)
                                 for arm, p in adapters.items()}}

    stage("2/8 persona vector (every layer)")
    vec_questions = trait_questions("extract")[:cfg.vector_questions]

    def build_vector(d: Path) -> Direction:
        if not (d / "direction.json").is_file():
            persona_vector(base, trait, vec_questions, seed=cfg.seed).save(d)
        return Direction.load(d)
    vec = stages.run("vector", {**common, "trait": trait.name, "questions": vec_questions,
                                "seed": cfg.seed}, build_vector)

    stage("3/8 model diffing on held-out answers")
    diff_q = heldout(ind, cfg.diff_per_domain)

    def build_items(d: Path) -> list:
        path = d / "items.jsonl"
        if not path.is_file():
            got = probe_set_from_answers(base, diff_q, cfg.diff_max_new_tokens, seed=cfg.seed)
            write_jsonl(path, ({"id": it.id, "messages": it.messages} for it in got))
        return load_jsonl(path)
    items = stages.run("diff-items", {**common, "questions": diff_q,
                                      "max_new_tokens": cfg.diff_max_new_tokens,
                                      "seed": cfg.seed}, build_items)

    def build_diff(d: Path) -> dict:
        path = d / "diff.json"
        if not path.is_file():
            write_json(path, _diff(cfg, sae, subjects, items, vec, layer))
        return json.loads(path.read_text())
    diff = stages.run("diff", {**common, "sae": sae_identity(sae), "adapters": arm_ids,
                               "items": stages.fingerprint_of("diff-items"),
                               "vector": stages.fingerprint_of("vector"),
                               "top_latents": cfg.top_latents, "seed": cfg.seed}, build_diff)
    top_k = [r["latent"] for r in diff["ranking"][:cfg.steer_latents]]
    targets = {f"top{len(top_k)} latents": SAELatents(sae, top_k),
               f"{trait.name} vector": vec}
    every_layer = tuple(range(base.n_layers))
    edits = {**common, **measure, "sae": sae_identity(sae), "latents": top_k,
             "vector": stages.fingerprint_of("vector"), "layer": layer,
             "ablation_mode": cfg.ablation_mode, "random_controls": cfg.random_controls,
             "seed": cfg.seed}

    stage("4/8 steer and ablate on the base model")
    dr = DoseResponseConfig(alphas=cfg.alphas, layers=(layer,), ablation=True,
                            ablation_layers=every_layer, ablation_mode=cfg.ablation_mode,
                            random_controls=cfg.random_controls, seed=cfg.seed)
    steer_rows = stages.run("steer-base", {**edits, "alphas": list(cfg.alphas)},
                            lambda d: dose_response(base, targets, would_say, dr, d,
                                                    f"{trait.name}_would_say"))

    stage("5/8 ablate in the treatment model")
    ab = DoseResponseConfig(alphas=(0.0,), layers=(layer,), ablation=True,
                            ablation_layers=every_layer, ablation_mode=cfg.ablation_mode,
                            random_controls=cfg.random_controls, seed=cfg.seed)
    ablate_rows = stages.run(
        "ablate-treatment", {**edits, "adapter": arm_ids["treatment"]},
        lambda d: dose_response(subjects["treatment"], targets, would_say, ab, d,
                                f"{trait.name}_would_say", reference=base))

    generations = None
    if cfg.steer_generations:
        stage(f"6/8 generations under the same edits ({cfg.steer_generations} per question)")
        generations = _steer_generations(cfg, stages, edits, base, targets, dr,
                                         metric_questions, steer_rows)

    stage(f"7/8 re-align: {cfg.realign_steps} SFT steps on good data")
    rcfg = FinetuneConfig.from_dict({
        **treatment_finetune_fields(ind), **good_data(ind, stages.dir("induce")),
        "model": ind.model, "seed": cfg.seed, "adapter": str(adapters["treatment"]),
        "max_steps": cfg.realign_steps, "save_steps": cfg.realign_every},
        "re-alignment finetune")

    def build_realign(d: Path) -> list[dict]:
        curve_path = d / "curve.jsonl"
        if not (d / "adapter" / "persona_probe.json").is_file():
            curve_path.unlink(missing_ok=True)   # a resumed run re-records from its checkpoint
            trainer_base = load_subject(base.spec, device=base.device, dtype=base.dtype)
            finetune_once(rcfg, d / "adapter", subject=trainer_base, callbacks=[
                periodic_metric(trainer_base, would_say, cfg.realign_every, curve_path,
                                f"{trait.name}_would_say")])
        return [rec for _, rec in iter_jsonl(curve_path, what="re-alignment curve")]
    realign_inputs = {k: v for k, v in asdict(rcfg).items() if k not in ("adapter", "data")}
    curve = stages.run("realign", {**common, **measure, "finetune": realign_inputs,
                                   "adapter": arm_ids["treatment"],
                                   "data": stages.fingerprint_of("induce"),
                                   "every": cfg.realign_every}, build_realign)

    stage("8/8 results and figures")
    # base and treatment were measured unsteered by the two sweeps (α = 0); only the control is new
    unsteered = {name: [r["value"] for _, r in iter_jsonl(runs / sweep / "items.jsonl")
                        if r["condition"] == "steer" and r["alpha"] == 0.0
                        and r["target"] == next(iter(targets))]
                 for name, sweep in (("base", "steer-base"), ("treatment", "ablate-treatment"))}
    measured = {name: (np.array(unsteered[name]) if name in unsteered else would_say(s))
                for name, s in subjects.items()}
    names = list(measured)
    results = {
        "experiment": "em_persona_features", "config": asdict(cfg), "config_path": config_path,
        "command": command, "git_sha": git_sha(), **stages.summary(),
        "model": base.provenance(), "sae": {"spec": cfg.sae, "hook": hook,
                                            "d_sae": int(sae.cfg.d_sae)},
        "induce": {"kind": ind.kind, "adapters": {k: str(v) for k, v in adapters.items()}},
        "measure": f"{trait.name} would-say: mean per-token log-likelihood of the trait's "
                   f"replies minus the anti-trait's, {len(metric_questions)} held-out general "
                   "questions, no system prompt",
        "would_say": {k: bootstrap(v, seed=cfg.seed).to_dict() for k, v in measured.items()},
        "would_say_paired": {f"{a}-{b}": paired_difference(measured[a], measured[b],
                                                           seed=cfg.seed).to_dict()
                             for i, a in enumerate(names) for b in names[i + 1:]},
        "diff": {k: v for k, v in diff.items() if k != "projection_values"},
        "steer_base": steer_rows, "ablate_treatment": ablate_rows,
        "ablation_gaps": ablation_gaps(runs / "steer-base" / "items.jsonl",
                                       runs / "ablate-treatment" / "items.jsonl", cfg.seed),
        "realign_curve": [{k: p[k] for k in ("step", "mean", "lo", "hi", "n")} for p in curve],
        "seconds": round(time.perf_counter() - t0, 1), "provenance": provenance(cfg.seed)}
    if generations is not None:
        results["steering_generations"] = generations
    write_json(out / "results.json", results)
    for name, rows in (("ranking", diff["ranking"]), ("steer_base", steer_rows),
                       ("ablate_treatment", ablate_rows),
                       ("realign_curve", results["realign_curve"])):
        write_jsonl(out / f"{name}.jsonl", rows)
    paths = draw(out)
    summarize(results)
    stage("done")
    report_outputs(out, paths)
    return results


def _diff(cfg: EMPersonaFeaturesConfig, sae, subjects: dict, items: list, vec, layer: int
          ) -> dict:
    """Latents ranked by Δ mean activation (treatment − base) over the diffing items, each with
    its Δ in the control and its decoder's cosine with the persona vector; top examples; the
    persona vector's mean projection per model."""
    import torch

    from persona_probe.latents import (decoder_cosines, rank_latents, token_activations,
                                       top_examples)
    from persona_probe.stats import bootstrap, paired_difference

    acts = {name: token_activations(s, sae, items) for name, s in subjects.items()}
    rows = {name: a[0] for name, a in acts.items()}
    ranking = rank_latents(sae, rows["treatment"], rows["base"], ("treatment", "base"))
    control = rank_latents(sae, rows["control"], rows["base"], ("control", "base"))
    cos = decoder_cosines(sae, vec)
    top = ranking.top(cfg.top_latents)
    table = [{**r, "delta_mean_control": float(control.delta_mean[r["latent"]]),
              "delta_freq_control": float(control.delta_freq[r["latent"]]),
              "cosine_persona_vector": float(cos[r["latent"]])}
             for r in ranking.table(cfg.top_latents)]
    examples = top_examples(subjects["treatment"], sae, items, top, n=3)
    u = vec.at(layer).float()
    proj = {name: _per_item_projection(r, w, u) for name, (r, w) in acts.items()}
    # how much of the Δ mean activation vector, decoded, points along the persona vector
    dec = sae.W_dec.detach().float().cpu()
    shift = ranking.delta_mean.float() @ dec
    return {"items": len(items), "tokens": int(rows["base"].shape[0]), "ranking": table,
            "examples": {str(k): ["".join(e.tokens).replace("\n", " ")
                                  for e in v.examples] for k, v in examples.items()},
            "decoded_shift_cosine_persona_vector": float(
                torch.nn.functional.cosine_similarity(shift, u, dim=0)),
            "top_latents_cosine_rank": _cosine_rank(cos, top),
            "projection": {k: bootstrap(v, seed=cfg.seed).to_dict() for k, v in proj.items()},
            "projection_paired": {
                f"{a}-base": paired_difference(proj[a], proj["base"], seed=cfg.seed).to_dict()
                for a in ("treatment", "control")},
            "projection_values": proj}


def _steer_generations(cfg: EMPersonaFeaturesConfig, stages, edits: dict, base, targets: dict,
                       dr, questions: list[str], steer_rows: list[dict]) -> dict:
    """The base-steering stage's edits sampled (each target and its random controls at every
    positive α, and the unsteered base), judged by the shipped probe judges with the coherence
    rule beside them, next to the teacher-forced effect of the same edit. One resumable stage
    (``steer-generations``)."""
    from persona_probe.artifacts import ItemLog
    from persona_probe.evals.behaviour import (GENERATION_JUDGES, dose_generation_summary,
                                               dose_response_generations)
    from persona_probe.evals.coherence import CoherenceRule
    from persona_probe.evals.probe_judge import load_probe_judges

    judges = load_probe_judges(list(GENERATION_JUDGES))
    rule = CoherenceRule.shipped()
    judge_model = next(iter(judges.values())).model

    def build(d: Path) -> dict[str, list[dict]]:
        return dose_response_generations(base, targets, dr, questions, judges, rule,
                                         judge_model, ItemLog(d / "generations.jsonl"),
                                         cfg.steer_generations, cfg.seed, cfg.generation_tokens)
    rows = stages.run("steer-generations", {
        **edits, "alphas": list(cfg.alphas), "samples": cfg.steer_generations,
        "max_new_tokens": cfg.generation_tokens, "sampling_seed": cfg.seed,
        "judges": [j.identity for j in judges.values()], "coherence": asdict(rule)}, build)
    return {"samples": cfg.steer_generations, "max_new_tokens": cfg.generation_tokens,
            "temperature": 1.0,          # evals.behaviour.sample_replies' default
            **dose_generation_summary(rows, list(judges), len(questions),
                                      cfg.coherence_margin, steer_rows),
            "judges": [f"probe:{k}" for k in judges]}


def _per_item_projection(rows, where, u):
    """Mean projection of each item's response-token residuals on the unit vector ``u``."""
    import torch

    item = torch.tensor([w[0] for w in where])
    proj = rows.float() @ u
    return [float(proj[item == i].mean()) for i in item.unique().tolist()]


def _cosine_rank(cos, latents) -> list[int]:
    """Rank (0 = most aligned) of each latent's decoder cosine with the persona vector among
    all latents: is a top diffed latent also a persona-vector latent?"""
    import torch

    order = torch.argsort(cos, descending=True).tolist()
    where = {k: i for i, k in enumerate(order)}
    return [where[k] for k in latents]


def draw(out: Path) -> list[Path]:
    """Every figure of the experiment from ``out/results.json`` (HTML; PNG where kaleido finds
    a Chromium)."""
    from persona_probe.figures import (ablation_bars, dose_response_curves, latent_shift_bars,
                                       realignment_curve, write_figures_or_html)

    res = json.loads((out / "results.json").read_text())
    ws = res["would_say"]
    trait = res["config"]["trait"]
    metric = f"{trait} would-say (log-lik, trait − anti)"
    figs = {
        "latent_shifts": latent_shift_bars(
            res["diff"]["ranking"], n=res["config"]["top_latents"],
            examples={int(k): v for k, v in res["diff"]["examples"].items()},
            labels=("treatment", "base"),
            title="SAE latents that fire more after finetuning (model diffing)"),
        "dose_response": dose_response_curves(
            res["steer_base"], metric=metric, title="Steering the base model"),
        "ablation": ablation_bars(
            res["ablation_gaps"], metric=f"treatment − base gap in {trait} would-say",
            title="Does ablating a target remove the finetuning-induced shift?"),
        "realign": realignment_curve(
            {"treatment → good data": res["realign_curve"]}, metric=metric,
            reference={k: ws[k]["mean"] for k in ("base", "control")},
            title="Re-alignment by SFT on good data"),
    }
    return write_figures_or_html(figs, out)   # one Chromium session for every PNG


def summarize(res: dict) -> None:
    """The headline numbers, as the README quotes them."""
    def f(e: dict) -> str:
        return f"{e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]"

    print("would-say:", ", ".join(f"{k} {f(v)}" for k, v in res["would_say"].items()))
    print("paired:", ", ".join(f"{k} {f(v)}" for k, v in res["would_say_paired"].items()))
    d = res["diff"]
    print("persona-vector projection, paired Δ:",
          ", ".join(f"{k} {f(v)}" for k, v in d["projection_paired"].items()))
    print("top latents (Δ treatment, Δ control, cos with vector):", "; ".join(
        f"#{r['latent']} {r['delta_mean']:+.3f} {r['delta_mean_control']:+.3f} "
        f"{r['cosine_persona_vector']:+.2f}" for r in d["ranking"][:5]))
    for r in res["steer_base"]:
        if r["condition"] == "steer":
            print(f"steer base {r['target']:>22} α={r['alpha']:.2f} {f(r)}")
    for g in res["ablation_gaps"]:
        print(f"gap under ablation {g['target']:>22}: {f(g['gap_ablated'])} (none {f(g['gap'])});"
              f" removed {f(g['reduction'])} = {g['fraction_removed']:.0%}")
    print("re-alignment:", ", ".join(f"step {p['step']} {p['mean']:+.3f}"
                                     for p in res["realign_curve"]))
