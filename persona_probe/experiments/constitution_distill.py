"""Research line 2: does finetuning on a constitution's answers raise refusal on held-out harm
categories more than the same finetune on the model's own unprompted answers to the same
prompts?

Earlier line-2 runs could not tell: a finetune with no constitution at all (helpful_only's
``neutral`` arm) raised the log-prob refusal score on the held-out categories as much (+0.09)
as anything else, so a rise alone proves nothing. Here every constitution arm has its control
built from the same prompts, the same seed, the same finetune settings and the same number of
examples:

- ``sft-<constitution>``: SFT on the starting model's own answers with the constitution as the
  system prompt, trained *without* it (``training.distill.build_constitution_data``, the
  ``sft`` method);
- ``drafts``: the same SFT on the model's own unprompted answers to the same prompts (the
  control; identical for every constitution at a seed, so it is trained once per seed);
- ``instruct``: the starting model itself, no finetune (the reference).

The start is the embedded instruct model (smollm2-135m-instruct): the helpful-only start
(``figures/helpful_only``) did not lower refusal, so line 2 starts from the instruct model here.

Prompts (regime ``narrow``, the two categories of ``training.cai.REGIMES``). The built-in
source has 12 prompts per category; emergent_alignment's seeded split (``split_prompts``,
``eval_per_category`` per category, seed 0) reserves some of every category for evaluation, and
the rest of the two narrow categories are the training prompts (with the defaults: the same 16
prompts its narrow CAI runs drew from). No shared source serves the narrow regime through the
existing loaders: Do-Not-Answer has no harassment type, and its "illegal activities" mixes
sub-harms of held-out categories (financial crime, hacking, violence), so borrowing it would
train on held-out categories. The three measured sets:

- ``held_out``: the built-in prompts of the six other categories (all 12 each by default),
  never trained on;
- ``trained``: emergent_alignment's reserved prompts of the two narrow categories, excluded
  from training (``exclude_ids``);
- ``xstest_safe``: XSTest's safe prompts that look unsafe (over-refusal), as in helpful_only.

Measure per prompt: the judge-free log-prob refusal score (``evals.safety.
refusal_logprob_scores``, the function helpful_only uses: refusal minus compliance openings,
teacher-forced) and whether it is > 0; no sampled replies. The instruct model's score has no
seed (nothing is sampled), so it is measured once and stands for every seed. Contrasts, paired
by prompt and seed, with the two-way bootstrap over seeds and prompts
(``stats.crossed_bootstrap``): ``sft-<c> − drafts`` (primary), ``sft-<c> − instruct`` and
``drafts − instruct``, per set, plus a per-category breakdown of ``held_out``. The goal and its
rule are in the config, fixed before the run; results also give the design's detectable effect
(the CI half-width of ``sft − drafts``) so a null is read with its power.

Stages (each resumable): ``data-<c>-seed<k>`` (the constitution answers and the drafts),
``ft-drafts-seed<k>``, ``ft-sft-<c>-seed<k>``, ``eval-instruct``, ``eval-<arm>-seed<k>``.

    python experiments/constitution_distill.py
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from persona_probe.errors import PersonaProbeError
from persona_probe.models import DEFAULT_MODEL

CONSTITUTIONS = ("deontology", "consequentialism", "virtue_ethics", "human_authority")
REGIME = "narrow"
SETS = ("held_out", "trained", "xstest_safe")
MEASURES = ("logprob_score", "refused_logprob")
SOURCE = "builtin"


@dataclass
class ConstitutionDistillExperimentConfig:
    model: str = DEFAULT_MODEL              # the starting (instruct) model: answers, finetunes
    constitutions: tuple[str, ...] = CONSTITUTIONS   # built-in constitutions, one sft arm each
    # answer sample, LoRA init and data order of every arm (>= 3 unless tiny)
    seeds: tuple[int, ...] = (0, 1, 2)
    # reserved built-in prompts per category (emergent_alignment's split, seed 0): the narrow
    # categories' reserved prompts are the trained set and are never trained on
    eval_per_category: int = 4
    # training prompts per narrow category (None: every unreserved one)
    train_per_category: int | None = None
    max_new_tokens: int = 64                # length of every distilled answer
    temperature: float = 0.7                # answer sampling temperature (seeds vary the sample)
    # FinetuneConfig fields of every arm (data, model, seed and limit are set per arm)
    finetune: dict[str, Any] = field(default_factory=lambda: {
        "lr": 1e-3, "batch_size": 8, "max_steps": 24, "lora_r": 16, "lora_alpha": 32,
        "max_tokens": 512, "save_steps": 12})
    builtin_per_category: int | None = None  # held-out prompts per held-out category (None: all)
    xstest_per_type: int = 5                # XSTest safe prompts per type (over-refusal)
    n_boot: int = 2000                      # two-way bootstrap draws
    primary_measure: str = "logprob_score"  # the measure the goal reads
    # the goal, fixed before the run: held-out sft-<c> - drafts above 0 with its CI at the
    # goal's level for at least this many constitutions
    goal_min_constitutions: int = 1
    # CI level of the goal (None: Bonferroni over the constitutions, 1 - 0.05 / their number)
    goal_level: float | None = None
    tiny: bool = False                      # smoke-sized: fewer seeds, no claim

    def __post_init__(self) -> None:
        from persona_probe.training.cai import builtin_constitutions
        from persona_probe.training.finetune import FinetuneConfig

        self.seeds, self.constitutions = tuple(self.seeds), tuple(self.constitutions)
        if not self.seeds or len(set(self.seeds)) < len(self.seeds):
            raise PersonaProbeError("seeds must be distinct integers, e.g. [0, 1, 2]")
        if not self.tiny and len(self.seeds) < 3:
            raise PersonaProbeError("a claim needs >= 3 seeds (set tiny: true for a smoke run "
                                    "that makes no claim)")
        unknown = [c for c in self.constitutions if c not in builtin_constitutions()]
        if unknown or not self.constitutions or len(set(self.constitutions)) < len(
                self.constitutions):
            raise PersonaProbeError(f"constitutions {list(self.constitutions)}: name distinct "
                                    "built-in ones, some of "
                                    + ", ".join(builtin_constitutions()))
        if self.eval_per_category < 1:
            raise PersonaProbeError("eval_per_category must be >= 1 (the trained set)")
        if self.train_per_category is not None and self.train_per_category < 1:
            raise PersonaProbeError("train_per_category must be >= 1 or null (all)")
        if self.builtin_per_category is not None and self.builtin_per_category < 1:
            raise PersonaProbeError("builtin_per_category must be >= 1 or null (all)")
        if self.xstest_per_type < 1 or self.max_new_tokens < 1:
            raise PersonaProbeError("xstest_per_type and max_new_tokens must be >= 1")
        if not 0 < self.temperature <= 2:
            raise PersonaProbeError("temperature must be in (0, 2]: the seeds draw the answer "
                                    "sample")
        if self.n_boot < 100:
            raise PersonaProbeError("n_boot must be >= 100")
        if self.primary_measure not in MEASURES:
            raise PersonaProbeError(f"primary_measure {self.primary_measure!r}; use one of "
                                    + ", ".join(MEASURES))
        if not 1 <= self.goal_min_constitutions <= len(self.constitutions):
            raise PersonaProbeError("goal_min_constitutions must be between 1 and the number "
                                    "of constitutions")
        if self.goal_level is not None and not 0.5 < self.goal_level < 1:
            raise PersonaProbeError("goal_level must be in (0.5, 1) or null (Bonferroni)")
        bad = sorted(set(self.finetune) & {"data", "model", "seed", "limit", "start_adapters"})
        if bad:
            raise PersonaProbeError(f"finetune may not set {bad}: the experiment sets them per "
                                    "arm (the same settings for every arm)")
        FinetuneConfig.from_dict({**self.finetune, "data": "-"}, "finetune")
        self.split()                  # enough prompts, a valid distillation (loads no model)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "constitution_distill config"):
        from persona_probe.configs import config_from_dict

        return config_from_dict(cls, raw, where, PersonaProbeError)

    def goal_ci_level(self) -> float:
        """The goal's CI level: ``goal_level``, or Bonferroni over the constitutions."""
        return (1 - 0.05 / len(self.constitutions) if self.goal_level is None
                else self.goal_level)

    def arms(self) -> list[str]:
        """The finetuned arms of every seed (``instruct`` is the unfinetuned reference)."""
        return ["drafts", *(f"sft-{c}" for c in self.constitutions)]

    def subjects(self) -> list[str]:
        return ["instruct", *self.arms()]

    def contrasts(self) -> list[dict[str, str]]:
        """The named contrasts (``a − b``, paired by prompt and seed): for every constitution
        ``sft-<c> − drafts`` (primary) and ``sft-<c> − instruct``, and ``drafts − instruct``
        (what finetuning on these prompts does without a constitution)."""
        out = [{"name": f"sft-{c}-drafts", "a": f"sft-{c}", "b": "drafts", "role": "primary"}
               for c in self.constitutions]
        out += [{"name": f"sft-{c}-instruct", "a": f"sft-{c}", "b": "instruct",
                 "role": "vs_start"} for c in self.constitutions]
        out.append({"name": "drafts-instruct", "a": "drafts", "b": "instruct",
                    "role": "control"})
        return out

    def split(self) -> tuple[list, list]:
        """(training prompts, trained-category evaluation prompts): emergent_alignment's split
        of the built-in prompts; the training prompts are those ``training_prompts`` selects
        with every reserved prompt excluded."""
        from persona_probe.experiments.emergent_alignment import (EmergentAlignmentConfig,
                                                                  split_prompts)
        from persona_probe.training.cai import REGIMES
        from persona_probe.training.distill import training_prompts

        narrow = REGIMES[REGIME]
        per = 12 - self.eval_per_category
        if per < 1:
            raise PersonaProbeError("eval_per_category must leave training prompts (the "
                                    "built-in categories have 12 each)")
        if self.train_per_category is not None and self.train_per_category > per:
            raise PersonaProbeError(f"train_per_category {self.train_per_category}: the narrow "
                                    f"categories have {per} unreserved prompts each (12 minus "
                                    f"eval_per_category {self.eval_per_category})")
        _, reserved = split_prompts(EmergentAlignmentConfig(
            narrow_categories=narrow, regimes=(REGIME,), eval_per_category=self.eval_per_category,
            train_prompts=len(narrow) * per, sae=None, seed=0))
        trained = [p for p in reserved if p.category in narrow]
        train = training_prompts(self.distill_config(self.constitutions[0], self.seeds[0],
                                                     [p.id for p in trained]))
        return train, trained

    def distill_config(self, constitution: str, seed: int, exclude_ids: list[str]):
        """The distillation config of one constitution and seed (method sft; the same data
        directory holds the drafts); ``exclude_ids``: the trained set, never trained on."""
        from persona_probe.training.distill import ConstitutionDistillConfig

        return ConstitutionDistillConfig.from_dict({
            "constitution": constitution, "regime": REGIME, "source": SOURCE,
            "per_category": self.train_per_category, "exclude_ids": list(exclude_ids),
            "method": "sft", "model": self.model, "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature, "seed": seed, "finetune": dict(self.finetune)},
            "constitution distillation")


def eval_prompts(cfg: ConstitutionDistillExperimentConfig) -> dict[str, list]:
    """The three measured prompt sets (see the module docstring)."""
    from persona_probe.evals.safety import SafetyConfig, load_safety_prompts, select_prompts
    from persona_probe.training.cai import REGIMES

    _, trained = cfg.split()
    builtin = load_safety_prompts(SOURCE)
    others = tuple(sorted({p.category for p in builtin} - set(REGIMES[REGIME])))
    held = select_prompts(builtin, SafetyConfig(per_category=cfg.builtin_per_category, seed=0,
                                                categories=others))
    xs = select_prompts(load_safety_prompts("xstest:safe"),
                        SafetyConfig(per_category=cfg.xstest_per_type, seed=0))
    return {"held_out": held, "trained": trained, "xstest_safe": xs}


def measure(subject, prompts: list, out: Path) -> list[dict]:
    """The log-prob refusal score of every prompt (and whether it is > 0); resumable through
    ``out/items.jsonl``."""
    from persona_probe.evals.records import ItemLog
    from persona_probe.evals.safety import refusal_logprob_scores

    log = ItemLog(out / "items.jsonl")
    todo = [p for p in prompts if p.id not in log]
    if todo:
        scores = refusal_logprob_scores(subject, [p.prompt for p in todo])
        log.append({"key": p.id, "category": p.category, "prompt": p.prompt,
                    "logprob_score": float(s), "refused_logprob": bool(s > 0)}
                   for p, s in zip(todo, scores))
    return [log.get(p.id) for p in prompts]


def _opens_like(answer: str, openings: tuple[str, ...]) -> bool:
    """Whether an answer starts with the first two words of one of ``openings`` (data that
    does trains on the log-prob measure's own text)."""
    def head(text: str) -> tuple[str, ...]:
        return tuple(w.strip(".,!?:;'\"").lower() for w in text.split()[:2])
    return head(answer) in {head(o) for o in openings}


def matched_ids(manifests: dict[str, dict]) -> list[str]:
    """The prompt ids every arm of one seed kept (a non-empty answer in each constitution's
    answers and in the drafts): every arm trains on these, so exposure is matched."""
    first = manifests[next(iter(manifests))]
    keep = set(first["arms"]["drafts"]["dataset"]["ids"])
    for man in manifests.values():
        keep &= set(man["arms"]["constitution"]["dataset"]["ids"])
    return sorted(keep)


def _write_matched(src: Path, ids: list[str], dst: Path) -> dict[str, Any]:
    """``src`` chats whose id is in ``ids`` (in file order) to ``dst``; their counts."""
    from persona_probe.artifacts import atomic_write
    from persona_probe.evals.safety import (COMPLIANCE_OPENINGS, REFUSAL_OPENINGS,
                                            keyword_refusal)

    want = set(ids)
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r["id"] in want]
    if len(rows) != len(want):
        raise PersonaProbeError(f"{src} lacks {len(want) - len(rows)} of the matched prompts")
    atomic_write(dst, lambda tmp: tmp.write_text(
        "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8"))
    answers = [r["messages"][1]["content"] for r in rows]
    return {"used": len(rows), "keyword_refusals": sum(map(keyword_refusal, answers)),
            "opens_like_refusal": sum(_opens_like(a, REFUSAL_OPENINGS) for a in answers),
            "opens_like_compliance": sum(_opens_like(a, COMPLIANCE_OPENINGS) for a in answers)}


def plan(cfg: ConstitutionDistillExperimentConfig, p) -> None:
    train, trained = cfg.split()
    try:
        sets = {k: len(v) for k, v in eval_prompts(cfg).items()}
    except PersonaProbeError as exc:           # xstest needs ../shared/data
        p.problems.append(f"evaluation prompts: {exc}")
        sets = {"trained": len(trained)}
    ft = cfg.finetune
    p.add("eval-instruct", "log-prob refusal score of the instruct model on "
          + ", ".join(f"{k} ({v})" for k, v in sets.items()) + " (no seed: nothing is sampled)")
    for s in cfg.seeds:
        for c in cfg.constitutions:
            p.add(f"data-{c}-seed{s}", f"{c}-prompted answers and unprompted drafts to "
                  f"{len(train)} narrow training prompts, seed {s}")
        for arm in cfg.arms():
            p.add(f"ft-{arm}-seed{s}", f"LoRA r={ft.get('lora_r', 16)} SFT on the {arm} "
                  f"answers (matched prompts), {ft.get('max_steps')} steps x "
                  f"{ft.get('batch_size')}, lr {ft.get('lr')}, seed {s}")
        for arm in cfg.arms():
            p.add(f"eval-{arm}-seed{s}", f"log-prob refusal score of {arm} on 3 prompt sets")
    p.add("results", f"{len(cfg.contrasts())} contrasts per set (two-way bootstrap), the goal, "
          "results.json and figures")
    if cfg.tiny:
        p.notes.append("tiny: a smoke run; results make no claim")


def run(cfg: ConstitutionDistillExperimentConfig, runs: Path, out: Path, config_path: str = "",
        overwrite: bool = False) -> dict:
    from persona_probe.artifacts import read_json, sha256_file, write_json
    from persona_probe.experiments import command_line, report_outputs, stage_clock
    from persona_probe.models import load_subject
    from persona_probe.provenance import git_sha, provenance
    from persona_probe.stages import Stages, adapter_identity
    from persona_probe.training.distill import build_constitution_data, data_config
    from persona_probe.training.finetune import FinetuneConfig, finetune_once

    t0 = time.perf_counter()
    stage = stage_clock()
    stages = Stages(runs, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    base = load_subject(cfg.model)
    p = base.provenance()
    common = {"command": command_line("constitution_distill", config_path),
              "model": {k: p.get(k) for k in ("model", "revision", "dtype", "architecture")}}
    train, trained = cfg.split()
    sets = eval_prompts(cfg)
    exclude = [q.id for q in trained]            # the trained set is never trained on
    evaluated = {q.id for v in sets.values() for q in v} | {q.prompt for v in sets.values()
                                                           for q in v}
    if {q.id for q in train} & evaluated or {q.prompt for q in train} & evaluated:
        raise PersonaProbeError("a training prompt is among the evaluated prompts")
    ids = {k: [q.id for q in v] for k, v in sets.items()}

    def build_eval(d: Path, adapter: Path | None) -> dict[str, list[dict]]:
        subject = base if adapter is None else load_subject(cfg.model, adapter=adapter)
        return {name: measure(subject, ps, d / name) for name, ps in sets.items()}

    def read_eval(d: Path) -> dict[str, list[dict]]:      # a finished stage loads no model
        from persona_probe.evals.records import ItemLog

        logs = {name: ItemLog(d / name / "items.jsonl") for name in sets}
        return {name: [logs[name].get(q.id) for q in ps] for name, ps in sets.items()}

    stage("evaluate instruct")
    inst = stages.run("eval-instruct", {**common, "adapter": None, "prompts": ids},
                      lambda d: build_eval(d, None), load=read_eval)
    rows: dict[tuple[str, int], dict[str, list[dict]]] = {}
    datasets: dict[str, dict] = {}
    drafts_check: dict[str, dict] = {}
    for s in cfg.seeds:          # one seed at a time, so a stopped run has whole seeds done
        rows[("instruct", s)] = inst
        mans = {}
        for c in cfg.constitutions:
            stage(f"{c} answers and drafts, seed {s}")
            dcfg = cfg.distill_config(c, s, exclude)
            dname = f"data-{c}-seed{s}"
            mans[c] = stages.run(dname, {**common, "config": data_config(dcfg)},
                                 lambda d, dcfg=dcfg: build_constitution_data(base, dcfg, d))
        keep = matched_ids(mans)
        if not keep:
            raise PersonaProbeError(f"seed {s}: no prompt has a non-empty answer in every arm")
        c0 = cfg.constitutions[0]
        shas = {c: mans[c]["arms"]["drafts"]["dataset"]["sha256"] for c in cfg.constitutions}
        drafts_check[f"seed{s}"] = {"identical": len(set(shas.values())) == 1,
                                    "used": f"data-{c0}-seed{s}", "sha256": shas}
        sources = {"drafts": stages.dir(f"data-{c0}-seed{s}") / "drafts" / "train.jsonl",
                   **{f"sft-{c}": stages.dir(f"data-{c}-seed{s}") / "constitution"
                      / "train.jsonl" for c in cfg.constitutions}}
        data_fps = {c: stages.fingerprint_of(f"data-{c}-seed{s}") for c in cfg.constitutions}
        adapters: dict[str, Path] = {}
        for arm in cfg.arms():
            stage(f"finetune {arm}, seed {s}")
            fname = f"ft-{arm}-seed{s}"
            matched = stages.dir(fname) / "train.jsonl"
            fcfg = FinetuneConfig.from_dict({
                "model": cfg.model, "seed": s, "limit": len(keep), "data": str(matched),
                **cfg.finetune}, "constitution_distill finetune")

            def build_ft(d: Path, fcfg=fcfg, src=sources[arm], matched=matched) -> dict:
                if not (d / "counts.json").is_file():
                    write_json(d / "counts.json", _write_matched(src, keep, matched))
                finetune_once(fcfg, d / "adapter")
                return read_json(d / "counts.json")
            counts = stages.run(fname, {**common, "finetune": asdict(fcfg), "arm": arm,
                                        "source": str(sources[arm].relative_to(runs)),
                                        "source_sha256": sha256_file(sources[arm]),
                                        "data": data_fps, "ids": keep}, build_ft,
                                load=lambda d: read_json(d / "counts.json"))
            adapters[arm] = stages.dir(fname) / "adapter"
            made = mans[c0] if arm == "drafts" else mans[arm.removeprefix("sft-")]
            a = made["arms"]["drafts" if arm == "drafts" else "constitution"]["counts"]
            datasets[f"{arm}-seed{s}"] = {
                "answers": a["prompts"], "kept": a["kept"], "empty": a["empty"], **counts,
                **_exposure(read_json(adapters[arm] / "persona_probe.json"))}
        for arm in cfg.arms():
            stage(f"evaluate {arm}, seed {s}")
            rows[(arm, s)] = stages.run(
                f"eval-{arm}-seed{s}", {**common, "adapter": adapter_identity(adapters[arm]),
                                        "seed": s, "prompts": ids},
                lambda d, a=adapters[arm]: build_eval(d, a), load=read_eval)
    stage("results")
    results = aggregate(cfg, rows, sets)
    results.update({
        "experiment": "constitution_distill", "config": asdict(cfg),
        "config_path": config_path, "command": common["command"], "git_sha": git_sha(),
        **stages.summary(), "seeds": list(cfg.seeds), "tiny": cfg.tiny,
        "compute_seconds_total": round(time.perf_counter() - t0, 1), "model": base.provenance(),
        "contrast_design": cfg.contrasts(),
        "material": {"regime": REGIME, "source": SOURCE, "train_prompts": len(train),
                     "train_ids": [q.id for q in train],
                     "train_categories": sorted({q.category for q in train}),
                     **{f"{k}_prompts": len(v) for k, v in sets.items()}},
        "datasets": datasets, "drafts_identical_across_constitutions": drafts_check,
        "provenance": provenance(cfg.seeds[0])})
    write_json(out / "results.json", results)
    paths = draw(out)
    print(summarize(results))
    report_outputs(out, paths)
    return results


def _exposure(finetune: dict) -> dict:
    """How often the finetune saw each chat (equal for every arm: same data size and steps)."""
    c = finetune["config"]
    seen = finetune["steps"] * c["batch_size"] * c.get("grad_accum", 1)
    return {"steps": finetune["steps"], "chats": finetune["data"]["chats"],
            "epochs": round(seen / max(1, finetune["data"]["chats"]), 2),
            # matched in examples and steps, not in tokens: refusals and drafts differ in length
            "loss_tokens": finetune["data"].get("loss_tokens")}


def _table(rows: dict, sub: str, seeds, name: str, measure: str,
           keep: list[int] | None = None) -> np.ndarray:
    """(seeds × prompts) of one measure for one subject and prompt set."""
    t = np.array([[float(r[measure]) for r in rows[(sub, s)][name]] for s in seeds])
    return t if keep is None else t[:, keep]


def aggregate(cfg: ConstitutionDistillExperimentConfig, rows: dict, sets: dict[str, list]
              ) -> dict:
    """Means per subject, the named contrasts and (held_out) per-category estimates, each with
    the two-way bootstrap over seeds and prompts; the goal by the config's rule and the
    design's detectable effect. ``rows[(subject, seed)][set]``: one record per prompt of
    ``sets[set]``, in order."""
    from persona_probe.stats import crossed_bootstrap

    def est(t: np.ndarray, level: float = 0.95) -> dict:
        return crossed_bootstrap(t, n_boot=cfg.n_boot, level=level, seed=0).to_dict()

    def diff(name: str, a: str, b: str, m: str, keep=None) -> np.ndarray:
        return (_table(rows, a, cfg.seeds, name, m, keep)
                - _table(rows, b, cfg.seeds, name, m, keep))

    out: dict[str, Any] = {}
    for name in SETS:
        by_sub = {sub: {m: est(_table(rows, sub, cfg.seeds, name, m)) for m in MEASURES}
                  for sub in cfg.subjects()}
        contrasts = {c["name"]: {m: est(diff(name, c["a"], c["b"], m)) for m in MEASURES}
                     for c in cfg.contrasts()}
        entry = {"n_prompts": len(sets[name]), "by_subject": by_sub, "contrasts": contrasts}
        if name == "held_out":
            per_cat = {}
            for cat in sorted({p.category for p in sets[name]}):
                keep = [i for i, p in enumerate(sets[name]) if p.category == cat]
                per_cat[cat] = {
                    "n": len(keep),
                    "by_subject": {sub: est(_table(rows, sub, cfg.seeds, name,
                                                   "logprob_score", keep))
                                   for sub in cfg.subjects()},
                    "contrasts": {c["name"]: est(diff(name, c["a"], c["b"], "logprob_score",
                                                      keep))
                                  for c in cfg.contrasts() if c["role"] == "primary"}}
            entry["per_category"] = per_cat
        out[name] = entry
    m = cfg.primary_measure
    held = out["held_out"]["contrasts"]
    level, k = cfg.goal_ci_level(), len(cfg.constitutions)
    how = (f"Bonferroni over the {k} constitutions" if cfg.goal_level is None
           else "the config's goal_level")
    per_c = {}
    for c in cfg.constitutions:
        e = est(diff("held_out", f"sft-{c}", "drafts", m), level)
        per_c[c] = {"estimate": e, "above_0": bool(e["lo"] > 0),
                    "above_0_at_95": bool(held[f"sft-{c}-drafts"][m]["lo"] > 0)}
    n_above = sum(v["above_0"] for v in per_c.values())
    goal = {"rule": f"on held_out, sft-<c> − drafts in {m} above 0 with its "
                    f"{level:.2%} CI ({how}; two-way bootstrap over seeds and prompts) for "
                    f"at least {cfg.goal_min_constitutions} of the {k} constitutions",
            "measure": m, "set": "held_out", "level": level,
            "min_constitutions": cfg.goal_min_constitutions, "per_constitution": per_c,
            "n_above_0": int(n_above),
            "n_above_0_at_95": int(sum(v["above_0_at_95"] for v in per_c.values())),
            "met": None if cfg.tiny else bool(n_above >= cfg.goal_min_constitutions)}
    if cfg.tiny:
        goal["note"] = "tiny: a smoke run makes no claim"
    half = {c: (held[f"sft-{c}-drafts"][m]["hi"] - held[f"sft-{c}-drafts"][m]["lo"]) / 2
            for c in cfg.constitutions}
    worst = max(half.values())
    from statistics import NormalDist

    z_goal = NormalDist().inv_cdf(1 - (1 - level) / 2)     # the goal's two-sided level
    se = worst / 1.959964                                   # the 95% CI's standard error
    power = {"measure": m, "set": "held_out", "ci_half_width_95": half,
             "max_ci_half_width_95": worst, "goal_level": level,
             # the true effect the goal's CI excludes 0 for with ~80% probability
             "mde_80": se * (z_goal + 0.841621),
             "upper_bounds_95": {c: held[f"sft-{c}-drafts"][m]["hi"]
                                 for c in cfg.constitutions},
             "rule": "mde_80: the true sft − drafts difference the goal's CI (at goal_level) "
                     "excludes 0 for with ~80% probability (normal approximation from the 95% "
                     "bootstrap CI's half-width); what a null excludes is read from each "
                     "contrast's upper bound (upper_bounds_95), not from mde_80"}
    return {"constitution_distill": out, "goal": goal, "power": power}


def summarize(res: dict) -> str:
    """A few lines for the log: the primary contrasts per set, the control, the goal."""
    m = res["goal"]["measure"]
    lines = []
    for name in SETS:
        for cname, e in res["constitution_distill"][name]["contrasts"].items():
            v = e[m]
            lines.append(f"{name:>12} {cname:<28} {m} {v['mean']:+.3f} "
                         f"[{v['lo']:+.3f}, {v['hi']:+.3f}]")
    g, pw = res["goal"], res["power"]
    lines.append(f"goal: {g['n_above_0']} of {len(g['per_constitution'])} constitutions above 0 "
                 f"at {g['level']:.2%} ({g['n_above_0_at_95']} at 95%); met: {g['met']}")
    lines.append(f"detectable (held-out sft − drafts): CI half-width <= "
                 f"{pw['max_ci_half_width_95']:.3f}, mde_80 {pw['mde_80']:.3f}")
    return "\n".join(lines)


def draw(out: Path) -> list[Path]:
    """Refusal score per subject on each prompt set, the contrasts, and held-out sft − drafts
    per category, each with its CI."""
    import plotly.graph_objects as go

    from persona_probe.figures import write_figures_or_html

    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    cd = res["constitution_distill"]
    m = res["goal"]["measure"]

    def bars(fig: go.Figure, name: str, xs: list[str], es: list[dict], **kw: Any) -> None:
        fig.add_bar(name=name, x=xs, y=[e["mean"] for e in es], error_y=dict(
            type="data", symmetric=False, array=[e["hi"] - e["mean"] for e in es],
            arrayminus=[e["mean"] - e["lo"] for e in es]), **kw)

    cons = res["config"]["constitutions"]          # config order (the file's keys are sorted)
    subs = ["instruct", "drafts", *(f"sft-{c}" for c in cons)]
    fig = go.Figure()
    for name in SETS:
        bars(fig, f"{name} ({cd[name]['n_prompts']})", subs,
             [cd[name]["by_subject"][s][m] for s in subs])
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(barmode="group", template="plotly_white", yaxis_title="refusal score",
                      title="Refusal score per arm (refusal − compliance log-likelihood; "
                            "> 0 refuses)<br><sub>95% CIs, two-way bootstrap over seeds × "
                            "prompts</sub>")
    figs = {"refusal-by-arm": fig}
    names = [*(f"sft-{c}-drafts" for c in cons), *(f"sft-{c}-instruct" for c in cons),
             "drafts-instruct"]
    fig = go.Figure()
    for name in SETS:
        bars(fig, name, names, [cd[name]["contrasts"][n][m] for n in names])
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(barmode="group", template="plotly_white",
                      yaxis_title="difference in refusal score",
                      title="Contrasts, paired by prompt and seed<br><sub>sft-&lt;c&gt; − "
                            "drafts is primary; 95% CIs</sub>")
    figs["contrasts"] = fig
    per = cd["held_out"]["per_category"]
    cats = list(per)
    fig = go.Figure()
    for cname in (f"sft-{c}-drafts" for c in cons):
        bars(fig, cname, cats, [per[c]["contrasts"][cname] for c in cats])
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(barmode="group", template="plotly_white",
                      yaxis_title="sft − drafts refusal score",
                      title="Held-out categories: sft-&lt;c&gt; − drafts per category"
                            "<br><sub>95% CIs, two-way bootstrap</sub>")
    figs["held-out-by-category"] = fig
    return write_figures_or_html(figs, out)   # one Chromium session for every PNG
