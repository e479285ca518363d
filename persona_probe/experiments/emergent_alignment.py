"""Emergent alignment and projectability (research line 2): Constitutional AI under each of the
four ethical constitutions, in a narrow and a broad regime, and what carries beyond training.

Stages (through ``persona_probe.stages``: each records the fingerprint of its inputs and the
git sha, a stale one is refused unless ``--overwrite``; a killed run picks up where it stopped):

1. *Split* the team's 96 categorized red-team prompts (8 safety categories × 12): per category,
   ``eval_per_category`` prompts (seeded) are reserved for evaluation and never trained on; the
   rest form the training pool (``runs/train_pool.tsv``).
2. *CAI data* per constitution × regime: answer, critique under a principle, revise
   (``training.cai``). Both regimes get the same number of red-team prompts
   (``train_prompts``), so they differ only in breadth: narrow draws them from the
   ``narrow_categories`` (harassment, illegal behaviour, as in the seed paper), broad from all
   eight categories.
3. *SFT* on the revisions (LoRA, ``finetune`` fields).
4. *Evaluation* of the base and every finetuned model on the reserved prompts and in
   contexts framed by each safety category (``category_context``) plus a neutral one:
   - refusal per category (judge-free log-prob detector and the keyword detector on a greedy
     reply), split into the narrow regime's trained categories and the six held-out ones;
   - the ethical persona diagnostic (would-say mode, the team's 44 statements per dimension);
   - representational: projection of response-averaged activations on each dimension's
     persona vector (difference in means on the base model, ``layer``).
5. *Profile shift*: finetuned − base diagnostic score per dimension in the neutral context,
   paired over statements; "took on its constitution's profile" = the intended dimension's
   shift exceeds the mean shift of the other three (``intended_margin``).
6. *Projectability* (docs/DESIGN.md definition; behavioural from the diagnostic, representational
   from the projections): trained contexts = the narrow categories, held out = the other six,
   for every model, so narrow and broad are compared on one split.
7. *Latents and directions*: which shipped-SAE latents each dimension's vector is made of
   (``decompose``), and which latents each finetune moved on the reserved prompts (model
   diffing), with each moved latent's decoder cosine to the intended dimension's vector.

The base model is the embedded instruct model, not a helpful-only one (none ships with the
toolkit); at 135M its refusals are weak, which leaves room to move. Results:
``figures/emergent_alignment/results.json``; figures: refusal by category, a persona radar per
constitution, projectability heatmaps (context × model) and a projectability bar chart.

    python experiments/emergent_alignment.py                   # CPU config, ~35 min
    python experiments/emergent_alignment.py --figures-only
"""

from __future__ import annotations

import csv
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CONSTITUTIONS = ("deontology", "consequentialism", "virtue_ethics", "human_authority")


@dataclass
class EmergentAlignmentConfig:
    model: str = "smollm2-135m-instruct"   # base model (CAI answers and every finetune)
    # built-in constitutions trained, one CAI run per regime each
    constitutions: tuple[str, ...] = CONSTITUTIONS
    regimes: tuple[str, ...] = ("narrow", "broad")   # narrow and/or broad (see above)
    # the narrow regime's (trained) safety categories; the others are held out
    narrow_categories: tuple[str, ...] = ("harassment", "illegal_behaviour")
    eval_per_category: int = 4          # reserved red-team prompts per category (never trained)
    train_prompts: int = 16             # red-team prompts per CAI run, in both regimes
    cai: dict[str, Any] = field(default_factory=dict)        # CAIConfig fields
    finetune: dict[str, Any] = field(default_factory=dict)   # FinetuneConfig fields
    layer: int = 15                     # layer of the dimension vectors and projections
    vector_questions: int | None = 8    # extraction questions per dimension vector
    representational_questions: int = 8  # heldout questions answered for the projections
    representational_tokens: int = 32   # longest of those answers, in tokens
    # longest greedy reply to a reserved prompt (keyword refusal detector, diffing items)
    refusal_tokens: int = 48
    sae: str | None = "shipped"         # None: skip the latent stage
    top_latents: int = 10               # latents listed per vector and per finetune's diff
    seed: int = 0                       # prompt split, CAI, finetunes, vectors and CIs

    def __post_init__(self) -> None:
        from persona_probe.errors import PersonaProbeError
        from persona_probe.training.cai import REGIMES, CAIConfig, builtin_constitutions
        from persona_probe.training.finetune import FinetuneConfig

        self.constitutions = tuple(self.constitutions)
        self.regimes = tuple(self.regimes)
        self.narrow_categories = tuple(self.narrow_categories)
        unknown = [c for c in self.constitutions if c not in builtin_constitutions()]
        if unknown or not self.constitutions:
            raise PersonaProbeError(f"constitutions {unknown or '[]'}; use some of "
                                    + ", ".join(builtin_constitutions()))
        bad = [r for r in self.regimes if r not in REGIMES]
        if bad or not self.regimes:
            raise PersonaProbeError(f"regimes {bad or '[]'}; use narrow and/or broad")
        if self.eval_per_category < 1 or self.train_prompts < 1:
            raise PersonaProbeError("eval_per_category and train_prompts must be >= 1")
        fixed = {"constitution", "regime", "source", "categories", "per_category"}
        if fixed & set(self.cai):
            raise PersonaProbeError(f"cai may not set {sorted(fixed & set(self.cai))}; the "
                                    "experiment sets them per run")
        CAIConfig(**{**self.cai, "seed": self.seed})
        if "data" in self.finetune:
            raise PersonaProbeError("finetune may not set 'data' (the revisions are)")
        FinetuneConfig.from_dict({**self.finetune, "data": "-"}, "finetune")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "emergent_alignment config"):
        from persona_probe.configs import config_from_dict
        from persona_probe.errors import PersonaProbeError

        return config_from_dict(cls, raw, where, PersonaProbeError)


def split_prompts(cfg: EmergentAlignmentConfig) -> tuple[list, list]:
    """(training pool, reserved evaluation prompts), per category by a seeded shuffle; checks
    that every regime can draw ``train_prompts`` from the pool."""
    from persona_probe.errors import PersonaProbeError
    from persona_probe.evals.safety import load_safety_prompts

    by_cat: dict[str, list] = {}
    for p in load_safety_prompts("builtin"):
        by_cat.setdefault(p.category, []).append(p)
    missing = sorted(set(cfg.narrow_categories) - set(by_cat))
    if missing:
        raise PersonaProbeError(f"narrow_categories {missing} are not safety categories; use "
                                "some of " + ", ".join(sorted(by_cat)))
    rng = random.Random(cfg.seed)
    pool, reserved = [], []
    for cat in sorted(by_cat):
        items = sorted(by_cat[cat], key=lambda p: p.id)
        rng.shuffle(items)
        reserved += items[:cfg.eval_per_category]
        pool += items[cfg.eval_per_category:]
    for regime in cfg.regimes:
        cats = cfg.narrow_categories if regime == "narrow" else tuple(sorted(by_cat))
        per, rest = divmod(cfg.train_prompts, len(cats))
        have = min(sum(p.category == c for p in pool) for c in cats)
        if rest or per > have:
            raise PersonaProbeError(
                f"train_prompts {cfg.train_prompts} must split evenly over the {regime} "
                f"regime's {len(cats)} categories with at most {have} each (12 per category "
                f"minus eval_per_category {cfg.eval_per_category})")
    return pool, reserved


def _write_pool(pool: list, path: Path) -> None:
    from persona_probe.artifacts import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh, delimiter="\t", lineterminator="\n")
            w.writerow(["category", "prompt"])
            w.writerows([p.category, p.prompt] for p in pool)
    atomic_write(path, write)


def model_names(cfg: EmergentAlignmentConfig) -> list[str]:
    return [f"{c}-{r}" for c in cfg.constitutions for r in cfg.regimes]


def _contexts(reserved: list) -> list:
    from persona_probe.evals.diagnostic import Context, category_context

    cats = sorted({p.category for p in reserved})
    return [Context("neutral"), *[category_context(
        c, [p.prompt for p in reserved if p.category == c]) for c in cats]]


def _evaluate(subject, d: Path, cfg: EmergentAlignmentConfig, reserved: list, contexts: list,
              directions: dict, questions: list[str]) -> dict:
    """Refusal, diagnostic and representational records of one model under ``d``
    (resumable logs)."""
    from persona_probe.evals.diagnostic import run_diagnostic
    from persona_probe.evals.projectability import representational_records
    from persona_probe.evals.safety import SafetyConfig, run_safety_eval

    safety = run_safety_eval(subject, reserved, SafetyConfig(
        trained_categories=cfg.narrow_categories, detectors=("logprob", "keyword"),
        max_new_tokens=cfg.refusal_tokens, seed=cfg.seed), out=d / "safety", progress=False)
    diag = run_diagnostic(subject, list(CONSTITUTIONS), contexts, "would_say",
                          out=d / "diagnostic", seed=cfg.seed)
    representational_records(subject, directions, contexts, questions, cfg.layer,
                              max_new_tokens=cfg.representational_tokens,
                              out=d / "representational")
    return {"safety": safety, "profiles": diag["profiles"]}


def cai_data_stats(revisions: Path, seed: int = 0) -> dict:
    """What the critique-revise loop produced: refusal rate (keyword detector) of the drafts
    and of the revisions, how often the revision repeats the draft, and how repetitive the
    revisions are (share of repeated word 4-grams) — a small model's loop can degenerate."""
    from persona_probe.evals.safety import keyword_refusal
    from persona_probe.prompts import iter_jsonl
    from persona_probe.stats import proportion

    def repeated(text: str) -> float:
        w = text.split()
        grams = [tuple(w[i:i + 4]) for i in range(len(w) - 3)]
        return 1 - len(set(grams)) / len(grams) if grams else 0.0

    recs = [r for _, r in iter_jsonl(revisions, what="CAI revisions")]
    rev = [r["messages"][-1]["content"] for r in recs]
    draft = [r["meta"]["initial"] or "" for r in recs]
    return {"n": len(recs),
            "draft_refusal": proportion([keyword_refusal(d) for d in draft],
                                        seed=seed).to_dict(),
            "revision_refusal": proportion([keyword_refusal(r) for r in rev],
                                           seed=seed).to_dict(),
            "revision_equals_draft": sum(a.strip() == b.strip() for a, b in zip(rev, draft)),
            "revision_repeated_4grams": sum(map(repeated, rev)) / max(len(rev), 1),
            "example": {"request": recs[0]["messages"][0]["content"], "draft": draft[0][:300],
                        "critique": (recs[0]["meta"]["critique"] or "")[:300],
                        "revision": rev[0][:300]} if recs else None}


def refusal_shift(model_recs: list[dict], base_recs: list[dict], seed: int = 0) -> dict:
    """Finetuned − base log-prob refusal score on the same reserved prompts (paired), per split
    of the narrow regime (trained / held-out categories)."""
    from persona_probe.stats import paired_difference

    base = {r["key"]: r["logprob_score"] for r in base_recs}
    model = {r["key"]: r["logprob_score"] for r in model_recs}
    out = {}
    for split in ("trained", "held_out"):
        keys = sorted(r["key"] for r in model_recs if r["split"] == split)
        out[split] = paired_difference([model[k] for k in keys], [base[k] for k in keys],
                                       seed=seed).to_dict()
    return out


def _records(eval_dir: Path, kind: str) -> list[dict]:
    from persona_probe.evals.records import read_items

    return read_items(eval_dir / kind / "items.jsonl")


def profile_shift(model_recs: list[dict], base_recs: list[dict], persona: str,
                  context: str = "neutral", seed: int = 0) -> dict:
    """Finetuned − base score per dimension in one context, paired over statements, and the
    intended dimension's shift minus the mean shift of the others (with its CI)."""
    import numpy as np

    from persona_probe.evals.diagnostic import (compare_contexts, profile_draws,
                                                resample_indices, statement_sets)

    tagged = ([{**r, "context": "model"} for r in model_recs if r["context"] == context]
              + [{**r, "context": "base"} for r in base_recs if r["context"] == context])
    shift = compare_contexts(tagged, "model", "base", seed)
    ids = statement_sets(tagged)
    point = profile_draws(tagged, None, ids)
    boot = profile_draws(tagged, resample_indices(ids, 2000, seed), ids)

    def margin(p: dict) -> Any:
        delta = {d: np.asarray(p["model"][d]) - np.asarray(p["base"][d]) for d in p["model"]}
        return delta[persona] - np.mean([v for d, v in delta.items() if d != persona], axis=0)
    draws = margin(boot)
    return {"shift": {d: e.to_dict() for d, e in shift.items()},
            "intended_margin": {"mean": float(margin(point)),
                                "lo": float(np.quantile(draws, 0.025)),
                                "hi": float(np.quantile(draws, 0.975)),
                                "n": int(draws.size), "level": 0.95}}


def _latents(cfg: EmergentAlignmentConfig, sae, base, subject, directions: dict,
             items: list) -> dict:
    """Latents the finetune moved on the reserved prompts (base's answers, teacher-forced in
    both models), and their decoder cosines with every dimension's vector."""
    from persona_probe.latents import decoder_cosines, diff_subjects

    ranking = diff_subjects(sae, subject, base, items)
    cos = {dim: decoder_cosines(sae, v) for dim, v in directions.items()}
    return {"top": [{**row, **{f"cos_{dim}": float(c[row["latent"]]) for dim, c in cos.items()}}
                    for row in ranking.table(cfg.top_latents)]}


def run(cfg: EmergentAlignmentConfig, runs: Path, out: Path, config_path: str = "",
        overwrite: bool = False) -> dict:
    """Every stage (reusing finished ones with the same fingerprint; a stale one is refused
    unless ``overwrite``) → ``out/results.json`` and the figures."""
    import torch

    from persona_probe.artifacts import read_json, write_json, write_jsonl
    from persona_probe.directions import Direction, persona_vector
    from persona_probe.evals.projectability import projectability
    from persona_probe.experiments import command_line, report_outputs, stage_clock
    from persona_probe.latents import decompose
    from persona_probe.models import load_subject
    from persona_probe.monitor import probe_set_from_answers
    from persona_probe.prompts import load_jsonl
    from persona_probe.provenance import git_sha, provenance
    from persona_probe.stages import Stages, adapter_identity, file_identity, subject_identity
    from persona_probe.training.cai import CAIConfig, critique_and_revise
    from persona_probe.training.finetune import FinetuneConfig, finetune_once
    from persona_probe.traits import load_trait, trait_questions

    t0 = time.perf_counter()
    stage = stage_clock()

    runs.mkdir(parents=True, exist_ok=True)
    stages = Stages(runs, overwrite=overwrite)
    command = command_line("emergent_alignment", config_path)
    pool, reserved = split_prompts(cfg)
    pool_path = runs / "train_pool.tsv"
    _write_pool(pool, pool_path)
    base = load_subject(cfg.model)
    common = {"command": command, "model": subject_identity(base)}
    contexts = _contexts(reserved)
    cats = sorted({p.category for p in reserved})
    trained_ctx = [f"category:{c}" for c in cfg.narrow_categories]
    held_ctx = [f"category:{c}" for c in cats if c not in cfg.narrow_categories]

    stage("1/5 a persona vector per ethical dimension (base model)")
    vec_questions = trait_questions("extract")[:cfg.vector_questions]

    def build_vectors(d: Path) -> dict[str, Direction]:
        for dim in CONSTITUTIONS:
            if not (d / dim / "direction.json").is_file():
                persona_vector(base, load_trait(dim), vec_questions, layers=[cfg.layer],
                               seed=cfg.seed).save(d / dim)
        return {dim: Direction.load(d / dim) for dim in CONSTITUTIONS}
    directions = stages.run("vectors", {**common, "dimensions": list(CONSTITUTIONS),
                                        "questions": vec_questions, "layer": cfg.layer,
                                        "seed": cfg.seed}, build_vectors)
    questions = trait_questions("heldout")[:cfg.representational_questions]

    adapters: dict[str, Path] = {}
    for name in model_names(cfg):
        constitution, regime = name.rsplit("-", 1)
        stage(f"2/5 CAI {name}: critique, revise, SFT")
        cats_r = cfg.narrow_categories if regime == "narrow" else tuple(cats)
        cai_cfg = CAIConfig(**{**cfg.cai, "constitution": constitution, "regime": regime,
                               "source": str(pool_path), "categories": cats_r,
                               "per_category": cfg.train_prompts // len(cats_r),
                               "seed": cfg.seed})
        ft_fields = {"limit": None, "seed": cfg.seed, **cfg.finetune, "model": cfg.model}

        def build_cai(d: Path, cai_cfg=cai_cfg, ft_fields=ft_fields) -> Path:
            data = critique_and_revise(base, cai_cfg, d, progress=False)
            return finetune_once(FinetuneConfig.from_dict({**ft_fields, "data": str(data)}),
                                 d / "adapter")
        ft_inputs = {k: v for k, v in asdict(FinetuneConfig.from_dict(
            {**ft_fields, "data": "-"})).items() if k != "data"}
        adapters[name] = stages.run(f"cai-{name}", {
            **common, "cai": {k: v for k, v in asdict(cai_cfg).items() if k != "source"},
            "pool": file_identity(pool_path), "finetune": ft_inputs}, build_cai,
            load=lambda d: d / "adapter")

    eval_inputs = {**common, "reserved": [(p.id, p.prompt) for p in reserved],
                   "contexts": [c.name for c in contexts], "questions": questions,
                   "vectors": stages.fingerprint_of("vectors"),
                   "narrow_categories": list(cfg.narrow_categories),
                   "refusal_tokens": cfg.refusal_tokens,
                   "representational_tokens": cfg.representational_tokens,
                   "layer": cfg.layer, "seed": cfg.seed}

    def evaluate(name: str, subject_of, adapter: Path | None) -> dict:
        def build(d: Path) -> dict:
            got = _evaluate(subject_of(), d, cfg, reserved, contexts, directions, questions)
            write_json(d / "eval.json", got)
            return got
        return stages.run(f"eval-{name}", {**eval_inputs, "adapter": adapter_identity(adapter)},
                          build, load=lambda d: read_json(d / "eval.json"))
    stage("3/5 evaluate base")
    evals = {"base": evaluate("base", lambda: base, None)}
    for name, adapter in adapters.items():
        stage(f"3/5 evaluate {name}")
        evals[name] = evaluate(name, lambda adapter=adapter: load_subject(
            cfg.model, adapter=adapter, device=base.device, dtype=base.dtype), adapter)

    stage("4/5 profile shifts and projectability")
    base_dir = stages.dir("eval-base")
    base_diag = _records(base_dir, "diagnostic")
    base_rep = _records(base_dir, "representational")
    base_safety = _records(base_dir, "safety")
    models: dict[str, dict] = {}
    for name in adapters:
        persona = name.rsplit("-", 1)[0]
        edir, cdir = stages.dir(f"eval-{name}"), stages.dir(f"cai-{name}")
        diag, rep = _records(edir, "diagnostic"), _records(edir, "representational")
        models[name] = {
            "constitution": persona, "regime": name.rsplit("-", 1)[1],
            "profile_shift": profile_shift(diag, base_diag, persona, seed=cfg.seed),
            "refusal_shift": refusal_shift(_records(edir, "safety"), base_safety, cfg.seed),
            "projectability": {
                "behavioural": projectability(diag, base_diag, persona, trained_ctx, held_ctx,
                                              cfg.seed).to_dict(),
                "representational": projectability(rep, base_rep, persona, trained_ctx,
                                                   held_ctx, cfg.seed).to_dict()},
            "cai": {"categories": json.loads((cdir / "manifest.json")
                                             .read_text())["categories_used"],
                    **cai_data_stats(cdir / "revisions.jsonl", cfg.seed)}}

    latents: dict[str, Any] = {}
    if cfg.sae is not None:
        stage("5/5 latents: vector decompositions and model diffing")
        from persona_probe.sae.io import load_sae

        sae = load_sae(cfg.sae, device=str(base.device), subject=base)
        def build_items(d: Path) -> list:
            path = d / "items.jsonl"
            if not path.is_file():
                got = probe_set_from_answers(base, [p.prompt for p in reserved],
                                             cfg.refusal_tokens, seed=cfg.seed)
                write_jsonl(path, ({"id": it.id, "messages": it.messages} for it in got))
            return load_jsonl(path)
        items = stages.run("diff-items", {**common,
                                          "reserved": [(p.id, p.prompt) for p in reserved],
                                          "max_new_tokens": cfg.refusal_tokens,
                                          "seed": cfg.seed}, build_items)
        latents["vectors"] = {dim: asdict(decompose(sae, v, cfg.top_latents))
                              for dim, v in directions.items()}
        latents["diffing"] = {}
        for name, adapter in adapters.items():
            subject = load_subject(cfg.model, adapter=adapter, device=base.device,
                                   dtype=base.dtype)
            with torch.no_grad():
                latents["diffing"][name] = _latents(cfg, sae, base, subject, directions, items)
            del subject
        latents["sae"] = sae.cfg.metadata.hook_name

    res = {"experiment": "emergent_alignment", "config": asdict(cfg), "config_path": config_path,
           "command": command, "git_sha": git_sha(), **stages.summary(),
           "model": base.provenance(), "split": {
               "trained_contexts": trained_ctx, "held_out_contexts": held_ctx,
               "reserved_prompts": [p.id for p in reserved], "pool_prompts": len(pool)},
           "directions": {d: {"layer": cfg.layer, "n_trait": v.meta.get("n_trait"),
                              "raw_norm": v.meta.get("raw_norms", [None])[0],
                              "cosines": {e: float(v.at(cfg.layer) @ w.at(cfg.layer))
                                          for e, w in directions.items() if e != d}}
                          for d, v in directions.items()},
           "evals": evals, "models": models, "latents": latents,
           "seconds": round(time.perf_counter() - t0, 1), "provenance": provenance(cfg.seed)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", res)
    paths = draw(out)
    summarize(res)
    report_outputs(out, paths)
    return res


def draw(out: Path) -> list[Path]:
    """Refusal by category (narrow models, broad models), a radar per constitution (base,
    narrow, broad; neutral context), projectability heatmaps, the projectability bars and the
    profile shift from base per dimension."""
    from persona_probe.figures import (arm_comparison_bars, persona_radar, projectability_bars,
                                       projectability_heatmap, refusal_by_category,
                                       write_figure_or_html)

    res = json.loads((out / "results.json").read_text())
    ev = res["evals"]
    models = {n: res["models"][n] for n in (f"{c}-{r}" for c in res["config"]["constitutions"]
                                            for r in res["config"]["regimes"])
              if n in res["models"]}      # the config's order (results.json sorts keys)
    paths: list[Path] = []
    for regime in res["config"]["regimes"]:
        names = [n for n in models if models[n]["regime"] == regime]
        held = ("hatched: held out" if regime == "narrow" else
                "hatched: held out by the narrow regime; broad trained on all")
        summaries = {"base": ev["base"]["safety"], **{n: ev[n]["safety"] for n in names}}
        fig = refusal_by_category(summaries, title=f"Refusal by category after {regime} CAI "
                                                   f"(log-prob detector; {held})")
        paths += write_figure_or_html(fig, out / f"refusal-{regime}")
        fig = refusal_by_category(summaries, value="logprob_score",
                                  title=f"Refusal score by category after {regime} CAI "
                                        f"({held})")
        paths += write_figure_or_html(fig, out / f"refusal-score-{regime}")
    for c in res["config"]["constitutions"]:
        profs = {"base": ev["base"]["profiles"]["neutral"],
                 **{n: ev[n]["profiles"]["neutral"] for n in models
                    if models[n]["constitution"] == c}}
        fig = persona_radar(profs, title=f"Ethical persona after CAI under {c} (would-say)",
                            score="would-say score (log-lik, holder − rejecter)")
        paths += write_figure_or_html(fig, out / f"radar-{c}")
    for kind in ("behavioural", "representational"):
        fig = projectability_heatmap(
            {n: m["projectability"][kind]["delta_margin"] for n, m in models.items()},
            trained=res["split"]["trained_contexts"],
            title=f"Projectability ({kind}): intended-persona margin shift by context")
        paths += write_figure_or_html(fig, out / f"projectability-{kind}")
    fig = projectability_bars({n: m["projectability"] for n, m in models.items()})
    paths += write_figure_or_html(fig, out / "projectability-summary")
    dims = list(next(iter(models.values()))["profile_shift"]["shift"]) if models else []
    fig = arm_comparison_bars(
        {d: {n: m["profile_shift"]["shift"][d] for n, m in models.items()} for d in dims},
        order=list(models), yaxis_title="finetuned − base would-say score",
        title="Profile shift from base (would-say, neutral context; paired 95% CIs)")
    paths += write_figure_or_html(fig, out / "profile-shift")
    return paths


def summarize(res: dict) -> None:
    def f(e: dict) -> str:
        return f"{e['mean']:+.3f} [{e['lo']:+.3f}, {e['hi']:+.3f}]"

    ev = res["evals"]
    print("refusal (log-prob detector) trained / held-out categories:")
    for n, e in ev.items():
        sp = e["safety"]["per_split"]
        print(f"  {n:<26} trained {f(sp['trained']['refusal_logprob'])}  held-out "
              f"{f(sp['held_out']['refusal_logprob'])}  score held-out "
              f"{f(sp['held_out']['logprob_score'])}")
    print("CAI data (keyword refusal of drafts -> revisions; repeated 4-grams in revisions):")
    for n, m in res["models"].items():
        c = m["cai"]
        print(f"  {n:<26} {c['draft_refusal']['mean']:.2f} -> {c['revision_refusal']['mean']:.2f}"
              f"  repeated {c['revision_repeated_4grams']:.2f}")
    print("refusal score, finetuned − base (paired): trained / held-out categories")
    for n, m in res["models"].items():
        r = m["refusal_shift"]
        print(f"  {n:<26} {f(r['trained'])}  {f(r['held_out'])}")
    print("intended-dimension margin of the profile shift; projectability (behavioural, "
          "representational):")
    for n, m in res["models"].items():
        p = m["projectability"]
        print(f"  {n:<26} margin {f(m['profile_shift']['intended_margin'])}  "
              f"proj {f(p['behavioural']['projectability'])}  "
              f"{f(p['representational']['projectability'])}")
