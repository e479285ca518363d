"""Misaligned persona features end to end (research line 1): induce a persona shift, find the
SAE latents that carry it by model diffing, test whether they and the persona vector *control*
it, and re-align the model with a few SFT steps on good data.

Stages, each resumable (its output under ``--runs`` is reused when present; a killed finetune
resumes from its checkpoint):

1. induce   treatment and control finetunes (``persona_probe.training.induce``): on CPU a
            trait-distillation organism (evil through 64 cooking answers vs its kind control);
            the GPU config uses the EM datasets (insecure vs secure code).
2. vector   the difference-in-means persona vector of the trait at every layer (base model).
3. diff     residuals at the SAE's hook over the base model's own answers to held-out
            questions, through base, treatment and control: latents ranked by Δ mean activation
            (treatment − base), each with its Δ in the control and its decoder's cosine with the
            persona vector; top activating examples; the persona vector's mean projection.
4. steer    dose-response on the *base* model: the top latents (one SAE target) and the persona
            vector against equal-norm random directions; each also ablated. Metric: the
            judge-free would-say trait measure on the team's 16 held-out general questions.
5. ablate   the same targets ablated in the *treatment* model (latents in latent mode at the
            SAE's hook; the vector and its random control at every layer): how much of the
            treatment − base gap survives when both models are ablated the same way (a
            difference in differences, since an ablation also moves the base model).
6. realign  the treatment adapter continued on good data it never saw, the trait measured
            every few steps.
7. figures  latent-shift bars, dose-response, ablation, re-alignment (HTML, PNG with kaleido).

    python experiments/em_persona_features.py                        # CPU config, ~10 min
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

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "em_persona_features config"):
        from persona_probe.configs import config_from_dict
        from persona_probe.errors import PersonaProbeError
        from persona_probe.training.induce import InductionConfig

        cfg = config_from_dict(cls, raw, where, PersonaProbeError)
        cfg.alphas = tuple(float(a) for a in cfg.alphas)
        if 0.0 not in cfg.alphas:
            raise PersonaProbeError(f"{where}: alphas must include 0.0 (the unsteered model)")
        if cfg.steer_latents < 1 or cfg.realign_every < 1:
            raise PersonaProbeError(f"{where}: steer_latents and realign_every must be >= 1")
        InductionConfig.from_dict({**cfg.induce, "seed": cfg.seed}, f"{where}: induce")
        return cfg


def run(cfg: EMPersonaFeaturesConfig, runs: Path, out: Path, config_path: str = "") -> dict:
    """Every stage (skipping finished ones) → ``out/results.json`` and the figures."""
    import numpy as np
    import torch

    from persona_probe.artifacts import write_json, write_jsonl
    from persona_probe.directions import Direction, persona_vector
    from persona_probe.dose_response import DoseResponseConfig, ablation_gaps, dose_response
    from persona_probe.experiments import command_line, report_outputs, stage_clock
    from persona_probe.interventions import SAELatents
    from persona_probe.latents import (decoder_cosines, rank_latents, token_activations,
                                       top_examples)
    from persona_probe.likelihood import trait_scores
    from persona_probe.models import load_subject
    from persona_probe.monitor import probe_set_from_answers
    from persona_probe.prompts import iter_jsonl, load_jsonl
    from persona_probe.provenance import provenance
    from persona_probe.sae.io import load_sae
    from persona_probe.stats import bootstrap, paired_difference
    from persona_probe.training.callbacks import periodic_metric
    from persona_probe.training.finetune import FinetuneConfig, finetune_once
    from persona_probe.training.induce import (InductionConfig, good_data, heldout, induce,
                                               treatment_finetune_fields)
    from persona_probe.traits import load_trait, trait_questions

    t0 = time.perf_counter()
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    ind = InductionConfig.from_dict({**cfg.induce, "seed": cfg.seed})
    trait = load_trait(cfg.trait)
    base = load_subject(ind.model)
    sae = load_sae(cfg.sae, device=str(base.device), subject=base)
    hook = sae.cfg.metadata.hook_name
    layer = int(hook.split(".")[1])
    metric_questions = trait_questions("heldout")[:cfg.metric_questions]

    def would_say(subject):
        return trait_scores(subject, trait, metric_questions)

    stage = stage_clock()
    stage(f"1/7 induce ({ind.kind}) → {runs / 'induce'}")
    adapters = induce(base, ind, runs / "induce")
    subjects = {"base": base, **{arm: load_subject(base.spec, adapter=p, device=base.device,
                                                   dtype=base.dtype)
                                 for arm, p in adapters.items()}}

    stage("2/7 persona vector (every layer)")
    vec_dir = runs / f"{trait.name}-vector"
    if not (vec_dir / "direction.json").is_file():
        qs = trait_questions("extract")[:cfg.vector_questions]
        persona_vector(base, trait, qs, seed=cfg.seed).save(vec_dir)
    vec = Direction.load(vec_dir)

    stage("3/7 model diffing on held-out answers")
    items_path = runs / "diff_items.jsonl"
    if items_path.is_file():
        items = load_jsonl(items_path)
    else:
        items = probe_set_from_answers(base, heldout(ind, cfg.diff_per_domain),
                                       cfg.diff_max_new_tokens, seed=cfg.seed)
        write_jsonl(items_path, ({"id": it.id, "messages": it.messages} for it in items))
    diff_path = runs / "diff.json"
    if diff_path.is_file():
        diff = json.loads(diff_path.read_text())
    else:
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
        diff = {"items": len(items), "tokens": int(rows["base"].shape[0]), "ranking": table,
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
        write_json(diff_path, diff)
    top_k = [r["latent"] for r in diff["ranking"][:cfg.steer_latents]]
    targets = {f"top{len(top_k)} latents": SAELatents(sae, top_k),
               f"{trait.name} vector": vec}
    every_layer = tuple(range(base.n_layers))

    stage("4/7 steer and ablate on the base model")
    dr = DoseResponseConfig(alphas=cfg.alphas, layers=(layer,), ablation=True,
                            ablation_layers=every_layer, ablation_mode=cfg.ablation_mode,
                            random_controls=cfg.random_controls, seed=cfg.seed)
    steer_rows = dose_response(base, targets, would_say, dr, runs / "steer_base",
                               f"{trait.name}_would_say")

    stage("5/7 ablate in the treatment model")
    ab = DoseResponseConfig(alphas=(0.0,), layers=(layer,), ablation=True,
                            ablation_layers=every_layer, ablation_mode=cfg.ablation_mode,
                            random_controls=cfg.random_controls, seed=cfg.seed)
    ablate_rows = dose_response(subjects["treatment"], targets, would_say, ab,
                                runs / "ablate_treatment", f"{trait.name}_would_say",
                                reference=base)

    stage(f"6/7 re-align: {cfg.realign_steps} SFT steps on good data")
    curve_path = runs / "realign_curve.jsonl"
    if not (runs / "realigned" / "persona_probe.json").is_file():
        curve_path.unlink(missing_ok=True)     # a resumed run re-records from its checkpoint
        rcfg = FinetuneConfig.from_dict({
            **treatment_finetune_fields(ind), **good_data(ind, runs / "induce"), "model": ind.model,
            "seed": cfg.seed, "adapter": str(adapters["treatment"]),
            "max_steps": cfg.realign_steps, "save_steps": cfg.realign_every},
            "re-alignment finetune")
        trainer_base = load_subject(base.spec, device=base.device, dtype=base.dtype)
        finetune_once(rcfg, runs / "realigned", subject=trainer_base, callbacks=[
            periodic_metric(trainer_base, would_say, cfg.realign_every, curve_path,
                            f"{trait.name}_would_say")])
    curve = [rec for _, rec in iter_jsonl(curve_path, what="re-alignment curve")]

    stage("7/7 results and figures")
    # base and treatment were measured unsteered by the two sweeps (α = 0); only the control is new
    unsteered = {name: [r["value"] for _, r in iter_jsonl(runs / sweep / "items.jsonl")
                        if r["condition"] == "steer" and r["alpha"] == 0.0
                        and r["target"] == next(iter(targets))]
                 for name, sweep in (("base", "steer_base"), ("treatment", "ablate_treatment"))}
    measured = {name: (np.array(unsteered[name]) if name in unsteered else would_say(s))
                for name, s in subjects.items()}
    names = list(measured)
    results = {
        "experiment": "em_persona_features", "config": asdict(cfg), "config_path": config_path,
        "command": command_line("em_persona_features", config_path),
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
        "ablation_gaps": ablation_gaps(runs / "steer_base" / "items.jsonl",
                                       runs / "ablate_treatment" / "items.jsonl", cfg.seed),
        "realign_curve": [{k: p[k] for k in ("step", "mean", "lo", "hi", "n")} for p in curve],
        "seconds": round(time.perf_counter() - t0, 1), "provenance": provenance(cfg.seed)}
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
