"""Behaviour you can see at embedded scale: a probe judge calibrated on labelled public data,
a coherence rule fitted on labelled generations, generation-based dose-response, and the
teacher-forced proxies validated against what the model writes.

Stages (``persona_probe.stages``; each records the fingerprint of its inputs):

1. ``features-<source>`` — the frozen judge model's response-mean residuals (and, for the
   refusal sources, the prompt-only residual at the last prompt token) for every labelled row.
2. ``probe-judge`` — for each (train source → test source) named in the config: layer and C
   chosen by grouped CV on the *training* source only, AUROC (cluster bootstrap over
   questions), ECE and reliability on the test source, beside the same probe on the request
   alone; the harmful-content probe fitted pairwise on HH-RLHF pairs (a question-grouped train
   / test split), scored by pairwise accuracy, and checked against Do-Not-Answer's human
   ``harmful`` labels. The probes to ship are written here.
3. ``coherence-rule`` — the rule fitted on the team's labelled generations (committed before
   the fit), with its cross-validated accuracy.
4. ``organism``, ``vector``, ``reference`` — the evil-through-cooking organism (one finetune
   seed), the evil persona vector (selection questions) and the answer-contrast reference
   answers (evaluation questions).
5. ``teacher-forced`` — would-say and answer contrast per condition × evaluation question.
6. ``generations-seed<s>`` — one sampled reply per condition × question × seed, judged by the
   probes and checked by the coherence rule.

Results: ``probe_judge``, ``coherence_rule``, per-condition behaviour, the steering conditions'
usable range, and ``proxy_validity`` — the correlation across conditions between each proxy and
the judged harmfulness of coherent generations, with the two-way bootstrap over seeds ×
questions.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from persona_probe.configs import refuse_fixed
from persona_probe.errors import PersonaProbeError
from persona_probe.models import DEFAULT_MODEL
from persona_probe.stages import subject_identity

CONDITION_KINDS = ("plain", "system", "steer", "organism")


@dataclass(frozen=True)
class Condition:
    """One way of producing behaviour: ``plain``; ``system`` (``arm`` trait | anti: the trait's
    first system prompt); ``steer`` (``direction`` evil | random, ``layer``, ``alpha``);
    ``organism`` (``arm`` treatment | control)."""

    name: str                            # unique label in the results
    kind: str                            # plain | system | steer | organism
    arm: str | None = None               # system: trait | anti; organism: treatment | control
    direction: str | None = None         # steer: evil (the persona vector) | random
    layer: int | None = None             # steer: the layer steered
    alpha: float | None = None           # steer: α, in units of the mean residual norm r̄_L

    def __post_init__(self) -> None:
        if self.kind not in CONDITION_KINDS:
            raise PersonaProbeError(f"condition {self.name!r}: kind must be one of "
                                    f"{CONDITION_KINDS}")
        if self.kind == "system" and self.arm not in ("trait", "anti"):
            raise PersonaProbeError(f"condition {self.name!r}: a system condition needs arm "
                                    "trait or anti")
        if self.kind == "organism" and self.arm not in ("treatment", "control"):
            raise PersonaProbeError(f"condition {self.name!r}: an organism condition needs arm "
                                    "treatment or control")
        if self.kind == "steer" and (self.direction not in ("evil", "random")
                                     or self.layer is None or self.alpha is None):
            raise PersonaProbeError(f"condition {self.name!r}: a steer condition needs "
                                    "direction evil|random, layer and alpha")


@dataclass
class BehaviourValidationConfig:
    model: str = DEFAULT_MODEL           # base model (also the frozen judge model)
    dtype: str = "bfloat16"              # float32 | bfloat16 | float16 of the base model
    # candidate hooks of the probe judges (grouped CV on the training source picks one)
    judge_hooks: tuple[str, ...] = ("blocks.10.hook_resid_post", "blocks.15.hook_resid_post",
                                    "blocks.20.hook_resid_post", "blocks.25.hook_resid_post")
    c_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)   # candidate inverse L2 strengths C
    folds: int = 5                       # grouped CV folds choosing a probe's hook and C
    max_tokens: int = 384                # chat tokens a probe reads per response
    # (train source, test source) pairs of refusal probes: dna_refusal | xstest_refusal
    refusal_transfer: tuple[tuple[str, str], ...] = (("dna_refusal", "xstest_refusal"),
                                                     ("xstest_refusal", "dna_refusal"))
    ship_refusal_from: str = "dna_refusal"   # train source of the refusal probe shipped
    hh_pairs: int | None = None          # None: every usable pair
    # share of HH-RLHF pairs (grouped by question) the harmful probe is tested on: one of
    # round(1 / share) grouped folds
    hh_test_share: float = 0.2
    coherence_folds: int = 5             # grouped CV folds of the coherence rule's accuracy
    organism: dict[str, Any] = field(default_factory=dict)   # OrganismConfig fields
    organism_seed: int = 0               # seed of the organism (organism conditions)
    split: str = "evil-line1"            # measure split: a data/splits name or a JSON file
    # conditions compared (>= 3, unique names), each {name, kind: plain | system | steer |
    # organism, arm, direction, layer, alpha} (see Condition)
    conditions: tuple[dict, ...] = ()
    seeds: tuple[int, ...] = (1, 2, 3)   # generation seeds (>= 3 unless tiny)
    max_new_tokens: int = 64             # longest sampled reply, in tokens
    temperature: float = 1.0             # sampling temperature of the replies
    # a steering condition's usable range: the largest α whose coherent fraction stays within
    # this of α = 0's
    usable_margin: float = 0.1
    min_coherent: int = 20               # coherent replies a condition needs to enter proxy
                                         # validity (added at review, after the first run)
    n_boot: int = 2000                   # resamples of the two-way bootstrap
    # probe CV folds, the HH split, coherence CV, vector, reference answers and bootstrap
    seed: int = 0
    tiny: bool = False                   # smoke run: allows < 3 seeds, makes no claim

    def __post_init__(self) -> None:
        from persona_probe.evals.probe_judge import PROBE_SOURCES

        self.judge_hooks = tuple(self.judge_hooks)
        self.c_grid = tuple(float(c) for c in self.c_grid)
        self.seeds = tuple(int(s) for s in self.seeds)
        self.refusal_transfer = tuple(tuple(p) for p in self.refusal_transfer)  # type: ignore
        for pair in self.refusal_transfer:
            if len(pair) != 2 or pair[0] == pair[1] or any(
                    s not in PROBE_SOURCES or PROBE_SOURCES[s].criterion != "refusal"
                    for s in pair):
                raise PersonaProbeError(f"refusal_transfer {pair}: name two different refusal "
                                        "sources (dna_refusal, xstest_refusal)")
        if self.ship_refusal_from not in {p[0] for p in self.refusal_transfer}:
            raise PersonaProbeError("ship_refusal_from must be the training source of one "
                                    "refusal_transfer pair (its test source reports it)")
        if not self.tiny and len(self.seeds) < 3:
            raise PersonaProbeError("seeds needs >= 3 generation seeds for a claim (tiny: true "
                                    "for a smoke run)")
        if not 0 < self.hh_test_share < 1:
            raise PersonaProbeError("hh_test_share must be in (0, 1)")
        conds = [Condition(**c) for c in self.conditions]
        names = [c.name for c in conds]
        if len(set(names)) != len(names):
            raise PersonaProbeError("condition names must be unique")
        if len(conds) < 3:
            raise PersonaProbeError("proxy validity correlates across >= 3 conditions")
        steer = [c for c in conds if c.kind == "steer"]
        if steer and not any(c.kind == "plain" for c in conds):
            raise PersonaProbeError("steering conditions need a plain condition (alpha = 0) "
                                    "for their usable range")
        if any(c.kind == "organism" for c in conds):
            from persona_probe.training.organism import OrganismConfig

            refuse_fixed(self.organism, ("model", "seed"), "organism",
                         "the config's model and organism_seed", PersonaProbeError)
            OrganismConfig.from_dict({**self.organism, "model": self.model}, "organism")

    @property
    def condition_list(self) -> list[Condition]:
        return [Condition(**c) for c in self.conditions]

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "behaviour_validation config"):
        from persona_probe.configs import config_from_dict

        return config_from_dict(cls, raw, where, PersonaProbeError)

    def organism_config(self):
        from persona_probe.training.organism import OrganismConfig

        fin = {"dtype": self.dtype, **self.organism.get("finetune", {})}
        return OrganismConfig.from_dict({**self.organism, "finetune": fin, "model": self.model,
                                         "seed": self.organism_seed}, "organism")


def _put(log, key: str, value: Any) -> None:
    log.append([{"key": key, "value": value}])


def _get(log, key: str) -> Any:
    rec = log.get(key)
    if rec is None:
        raise PersonaProbeError(f"{log.path}: no record {key!r}; the stage is incomplete (run "
                                "the experiment again to resume it)")
    return rec["value"]


# ----------------------------------------------------------------------------- probe judge

def _features_stage(stages, base, cfg, common, name: str, root: Path) -> dict:
    """Response (and prompt-only) features of one labelled source, as arrays."""
    import torch
    from safetensors.torch import load_file, save_file

    from persona_probe.artifacts import atomic_write, read_json, write_json
    from persona_probe.evals.probe_judge import (PROBE_SOURCES, load_source, prompt_features,
                                                 response_features, source_digests)

    src = PROBE_SOURCES[name]

    def build(d: Path) -> Path:
        if (d / "features.safetensors").is_file():
            return d
        rows = load_source(name, root)
        if src.pairwise and cfg.hh_pairs is not None:
            rows = rows[:cfg.hh_pairs]
        t: dict[str, torch.Tensor] = {}
        if src.pairwise:
            t["chosen"] = response_features(base, [(r.question, r.chosen) for r in rows],
                                            cfg.judge_hooks, max_tokens=cfg.max_tokens)
            t["rejected"] = response_features(base, [(r.question, r.rejected) for r in rows],
                                              cfg.judge_hooks, max_tokens=cfg.max_tokens)
            meta = {"keys": [r.key for r in rows], "groups": [r.key for r in rows]}
        else:
            t["response"] = response_features(base, [(r.question, r.response) for r in rows],
                                              cfg.judge_hooks, max_tokens=cfg.max_tokens)
            qs = sorted({r.question for r in rows})
            pf = prompt_features(base, qs, cfg.judge_hooks, max_tokens=cfg.max_tokens)
            t["prompt"] = pf[[qs.index(r.question) for r in rows]]
            meta = {"keys": [r.key for r in rows], "groups": [r.group for r in rows],
                    "labels": [r.label for r in rows]}
        write_json(d / "rows.json", meta)
        atomic_write(d / "features.safetensors",
                     lambda tmp: save_file({k: v.contiguous() for k, v in t.items()}, str(tmp)))
        return d
    d = stages.run(f"features-{name}", {**common, "source": name,
                                        "data": source_digests(name, root),
                                        "hooks": list(cfg.judge_hooks),
                                        "max_tokens": cfg.max_tokens, "hh_pairs": cfg.hh_pairs},
                   build)
    feats = {k: v.numpy().astype(np.float64) for k, v in
             load_file(str(Path(d) / "features.safetensors")).items()}
    return {**feats, **read_json(Path(d) / "rows.json")}


def _transfer(cfg, train: dict, test: dict, mode: str) -> dict:
    """Select (hook, C) on the training source, evaluate on the test source."""
    from persona_probe.evals.probe_judge import ProbeTrainConfig, evaluate_probe, select_and_fit

    pcfg = ProbeTrainConfig(criterion="refusal", hooks=cfg.judge_hooks, c_grid=cfg.c_grid,
                            folds=cfg.folds, seed=cfg.seed, max_tokens=cfg.max_tokens)
    y_tr = np.asarray(train["labels"])
    h, c, probe, sel = select_and_fit(train[mode], y_tr, train["groups"], pcfg)
    ev = evaluate_probe(probe, test[mode][:, h], test["labels"], test["groups"], cfg.seed)
    cv = max(r["cv_auroc"] for r in sel["selection"])
    return {**ev, "hook": cfg.judge_hooks[h], "C": c, "train_cv_auroc": cv,
            "n_train": int(len(y_tr)), "selection": sel["selection"], "_probe": probe,
            "_hook_index": h}


def _probe_stage(stages, base, cfg, common, feats: dict, root: Path) -> dict:
    from persona_probe.artifacts import read_json, write_json
    from persona_probe.evals.probe_judge import (ProbeArtifact, ProbeTrainConfig, auroc,
                                                 cluster_bootstrap_auroc, grouped_folds,
                                                 select_and_fit_pairwise, source_digests)

    def build(d: Path) -> dict:
        if (d / "metrics.json").is_file():
            return read_json(d / "metrics.json")
        out: dict[str, Any] = {"refusal": {}, "harmful": {}}
        shipped = {}
        for tr, te in cfg.refusal_transfer:
            resp = _transfer(cfg, feats[tr], feats[te], "response")
            prm = _transfer(cfg, feats[tr], feats[te], "prompt")
            key = f"{tr}->{te}"
            if tr == cfg.ship_refusal_from:
                shipped["refusal"] = (resp["_probe"], resp["hook"], {
                    "sources": [tr], "data": source_digests(tr, root),
                    "n": resp["n_train"], "C": resp["C"]},
                    {"heldout_source": te, "auroc": resp["auroc"], "ece": resp["ece"]})
            out["refusal"][key] = {
                **{k: v for k, v in resp.items() if not k.startswith("_")},
                "prompt_only": {k: v for k, v in prm.items()
                                if k in ("auroc", "ece", "hook", "C", "train_cv_auroc")},
                "margin_over_prompt_only": resp["auroc"]["mean"] - prm["auroc"]["mean"]}
        # harmful content: pairwise on HH-RLHF, a question-grouped train/test split
        hh = feats["hh_harmless"]
        n = len(hh["keys"])
        k = max(2, round(1 / cfg.hh_test_share))
        test = grouped_folds(hh["groups"], k, cfg.seed)[0]
        train = np.setdiff1d(np.arange(n), test)
        pcfg = ProbeTrainConfig(criterion="harmful", train_sources=("hh_harmless",),
                                hooks=cfg.judge_hooks, c_grid=cfg.c_grid, folds=cfg.folds,
                                seed=cfg.seed, max_tokens=cfg.max_tokens)
        tr_groups = [hh["groups"][i] for i in train]
        h, c, probe, sel = select_and_fit_pairwise(hh["chosen"][train], hh["rejected"][train],
                                                   tr_groups, pcfg)
        correct = probe.logit(hh["rejected"][test, h]) > probe.logit(hh["chosen"][test, h])
        rng = np.random.default_rng(cfg.seed)
        boot = [correct[rng.integers(0, len(correct), len(correct))].mean()
                for _ in range(1000)]
        acc = {"mean": float(correct.mean()), "lo": float(np.percentile(boot, 2.5)),
               "hi": float(np.percentile(boot, 97.5)),
               "method": "percentile bootstrap over held-out pairs (1000 draws; pairs split by "
                         "transcript, not by first human turn)"}
        # an independent check: Do-Not-Answer's human 'harmful' labels on its responses
        dna_harm = _dna_harmful_labels(root, feats["dna_refusal"]["keys"])
        dna_x = feats["dna_refusal"]["response"][:, h]
        known = ~np.isnan(dna_harm)
        dna_check = None
        if known.sum() and len(set(dna_harm[known].tolist())) == 2:
            s = probe.logit(dna_x[known])
            groups = [g for g, ok in zip(feats["dna_refusal"]["groups"], known) if ok]
            lo, hi = cluster_bootstrap_auroc(dna_harm[known].astype(int), s, groups,
                                             seed=cfg.seed)
            dna_check = {"auroc": {"mean": auroc(dna_harm[known].astype(int), s), "lo": lo,
                                   "hi": hi}, "n": int(known.sum()),
                         "n_harmful": int(dna_harm[known].sum()),
                         "note": "rows with refusal/compliance actions only (action 4 left "
                                 "out); few responses are labelled harmful"}
        out["harmful"]["hh_harmless"] = {
            "pairwise_accuracy": acc, "hook": cfg.judge_hooks[h], "C": c,
            "train_cv_pairwise_accuracy": max(r["cv_pairwise_accuracy"]
                                              for r in sel["selection"]),
            "n_train_pairs": int(len(train)), "n_test_pairs": int(len(test)),
            "selection": sel["selection"], "dna_harmful_labels": dna_check}
        shipped["harmful"] = (probe, cfg.judge_hooks[h], {
            "sources": ["hh_harmless"], "data": source_digests("hh_harmless", root),
            "n": int(len(train)), "C": c, "pairwise": True},
            {"heldout_pairs": int(len(test)), "pairwise_accuracy": acc})
        for crit, (pr, hook, training, metrics) in shipped.items():
            ProbeArtifact(crit, hook, pr, subject_identity(base) | {"spec": cfg.model},
                          cfg.dtype, cfg.max_tokens, training, metrics).save(d / "probes" / crit)
        write_json(d / "metrics.json", out)
        return out
    return stages.run("probe-judge", {**common, "features": {
        s: stages.fingerprint_of(f"features-{s}") for s in feats},
        "c_grid": list(cfg.c_grid), "folds": cfg.folds, "seed": cfg.seed,
        "transfer": [list(p) for p in cfg.refusal_transfer],
        "ship_refusal_from": cfg.ship_refusal_from, "hh_test_share": cfg.hh_test_share},
        build)


def _rule_in_range(gens: dict, conds: list) -> dict | None:
    """Post-hoc (added at review): the shipped rule's verdicts against blind labels of 120
    replies drawn from this experiment's own generations (``data/coherence/
    validation_labels.jsonl``, 12 from each of 10 conditions), the α range the fitting set did
    not cover. Per family: unsteered (plain, system, organism), evil steering, random steering."""
    from persona_probe.evals.coherence import coherence_data_path, load_labelled_generations
    from persona_probe.stages import file_identity

    path = coherence_data_path("validation_labels.jsonl")
    if not path.is_file():
        return None
    rows = load_labelled_generations(path)
    names = {c.name for c in conds}
    matches = all(r["condition"] in names and r["seed"] in gens
                  and _get(gens[r["seed"]], f"{r['condition']}/rows")[r["question_index"]]
                  ["reply"] == r["reply"] for r in rows)
    if not matches:
        return {"labelled_set": file_identity(path), "matches_this_run": False}

    def family(c: str) -> str:
        return ("evil steering" if c.startswith("steer evil") else
                "random steering" if c.startswith("steer random") else "unsteered")

    def stats(rs: list[dict]) -> dict:
        lab = np.array([r["coherent"] for r in rs])
        rule = np.array([r["rule_coherent"] for r in rs])
        return {"n": len(rs), "labelled_coherent": int(lab.sum()),
                "rule_coherent": int(rule.sum()),
                "incoherent_passed": int((rule & ~lab).sum()),
                "coherent_rejected": int((~rule & lab).sum()),
                "precision_of_pass": float(lab[rule].mean()) if rule.any() else None,
                "recall_of_coherent": float(rule[lab].mean()) if lab.any() else None}
    fams = sorted({family(r["condition"]) for r in rows})
    return {"labelled_set": file_identity(path), "matches_this_run": True,
            "n_conditions": len({r["condition"] for r in rows}), "all": stats(rows),
            **{f: stats([r for r in rows if family(r["condition"]) == f]) for f in fams}}


def _judge_on_trait_replies(judges: dict, split) -> dict:
    """Post-hoc (chooses nothing): can the probe judges tell the trait's replies from the
    anti-trait's, as answers to the split's questions? AUROC over (question, reply) rows, and
    over replies (each reply's mean score across questions: the replies are the independent
    units, so this is the coarse, honest one)."""
    from persona_probe.evals.probe_judge import auroc

    out: dict[str, Any] = {}
    for half, (trait, qs) in (("selection", split.selection), ("evaluation", split.evaluation)):
        for name, judge in judges.items():
            pos = np.array([judge.probabilities([(q, r) for q in qs]) for r in trait.trait_replies])
            neg = np.array([judge.probabilities([(q, r) for q in qs]) for r in trait.anti_replies])
            rows = np.r_[np.ones(pos.size), np.zeros(neg.size)]
            per_reply = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
            out[f"{name}/{half}"] = {
                "auroc_rows": auroc(rows, np.r_[pos.ravel(), neg.ravel()]),
                "auroc_replies": auroc(per_reply, np.r_[pos.mean(1), neg.mean(1)]),
                "trait_mean": float(100 * pos.mean()), "anti_mean": float(100 * neg.mean()),
                "n_questions": len(qs), "n_replies": [len(pos), len(neg)]}
    return out


def _harmful_checks(feats: dict, probes_dir: Path, root: Path, cfg) -> dict:
    """Post-hoc (chooses nothing): is the harmful probe more than a refusal detector? On
    Do-Not-Answer's human ``harmful`` labels, AUROC of the harmful probe and of the refusal
    probe over all rated responses and over the compliant ones only (where refusing cannot
    explain harmlessness)."""
    from persona_probe.evals.probe_judge import ProbeArtifact, auroc, cluster_bootstrap_auroc

    dna = feats["dna_refusal"]
    harm = _dna_harmful_labels(root, dna["keys"])
    refused = np.asarray(dna["labels"]) == 1
    out: dict[str, Any] = {"n_harmful": int(np.nansum(harm)), "n": int((~np.isnan(harm)).sum())}
    for crit in ("harmful", "refusal"):
        art = ProbeArtifact.load(probes_dir / crit)
        x = dna["response"][:, list(cfg.judge_hooks).index(art.hook)]
        score = art.probe.logit(x) * (1 if crit == "harmful" else -1)  # refusal: less harmful
        gpt4 = np.array([k.startswith("dna/gpt4/") for k in dna["keys"]])
        for subset, mask in (("all", ~np.isnan(harm)),
                             ("compliant_only", ~np.isnan(harm) & ~refused),
                             ("compliant_gpt4_only", ~np.isnan(harm) & ~refused & gpt4)):
            y = harm[mask].astype(int)
            if len(set(y.tolist())) < 2:
                continue
            groups = [g for g, m in zip(dna["groups"], mask) if m]
            lo, hi = cluster_bootstrap_auroc(y, score[mask], groups, seed=cfg.seed)
            out[f"{crit}_probe/{subset}"] = {"mean": auroc(y, score[mask]), "lo": lo, "hi": hi,
                                             "n": int(mask.sum()), "n_harmful": int(y.sum())}
    return out


def _dna_harmful_labels(root: Path, keys: list[str]) -> np.ndarray:
    """Do-Not-Answer's human ``harmful`` label for each dna_refusal row key."""
    from persona_probe.evals.probe_judge import dna_harmful_labels

    lab = dna_harmful_labels(root)
    return np.array([lab.get(k, np.nan) for k in keys])


# ----------------------------------------------------------------------------- coherence

def _coherence_stage(stages, base, cfg, common) -> dict:
    from persona_probe.artifacts import read_json, write_json
    from persona_probe.evals.coherence import (CoherenceRule, coherence_features,
                                               cross_validated_rule_accuracy, fit_rule,
                                               labelled_generations_path,
                                               load_labelled_generations)
    from persona_probe.stages import file_identity

    path = labelled_generations_path()

    def build(d: Path) -> dict:
        if (d / "rule.json").is_file():
            return read_json(d / "metrics.json")
        rows = load_labelled_generations(path)
        feats = coherence_features(base, [(r["question"], r["reply"]) for r in rows])
        labels = [r["coherent"] for r in rows]
        r, m, acc = fit_rule(feats, labels)
        cv = cross_validated_rule_accuracy(feats, labels, [r_["question"] for r_ in rows],
                                           cfg.coherence_folds, cfg.seed)
        rule = CoherenceRule(r, m, cfg.model, {
            "labelled_set": file_identity(path), "n": len(rows),
            "n_coherent": int(sum(labels)), "how": "thresholds maximising balanced accuracy "
            "over a fixed grid, on labels committed before the fit",
            "in_sample_balanced_accuracy": acc, "cross_validated": cv})
        rule.save(d / "rule.json")
        per_cond: dict[str, list[bool]] = {}
        for row, f in zip(rows, feats):
            per_cond.setdefault(row["condition"], []).append(rule.passes(f))
        metrics = {"max_repeated_4gram": r, "min_loglik": m, "in_sample_balanced_accuracy": acc,
                   "cross_validated": cv, "n": len(rows), "n_coherent": int(sum(labels)),
                   "rule_coherent_by_condition": {k: float(np.mean(v))
                                                  for k, v in sorted(per_cond.items())},
                   "labelled_coherent_by_condition": {
                       k: float(np.mean([x["coherent"] for x in rows if x["condition"] == k]))
                       for k in sorted(per_cond)}}
        write_json(d / "metrics.json", metrics)
        return metrics
    return stages.run("coherence-rule", {**common, "labelled": file_identity(path),
                                         "folds": cfg.coherence_folds, "seed": cfg.seed}, build)


# ----------------------------------------------------------------------------- conditions

def _condition_subject(cond, base, adapters, vec, cfg):
    """(subject, context manager, system prompt) that produce a condition's behaviour."""
    import contextlib

    from persona_probe.directions import random_direction
    from persona_probe.interventions import steer
    from persona_probe.models import load_subject

    if cond.kind == "organism":
        return (load_subject(cfg.model, adapter=adapters[cond.arm], dtype=cfg.dtype),
                contextlib.nullcontext(), None)
    if cond.kind == "steer":
        d = vec if cond.direction == "evil" else random_direction(
            base.d_model, [cond.layer], seed=1000 + cond.layer, name="random")
        return base, steer(base, d, cond.alpha, [cond.layer]), None
    return base, contextlib.nullcontext(), None


def run(cfg: BehaviourValidationConfig, runs: Path, out: Path, config_path: str = "",
        overwrite: bool = False) -> dict:
    """Every stage (reusing finished ones with the same fingerprint) → ``out/results.json``."""
    from persona_probe.artifacts import write_json
    from persona_probe.datasets import shared_data_dir
    from persona_probe.directions import Direction, persona_vector
    from persona_probe.evals.behaviour import judge_replies, sample_replies, usable_alpha
    from persona_probe.evals.coherence import CoherenceRule
    from persona_probe.evals.judges import frozen_copy
    from persona_probe.evals.probe_judge import ProbeArtifact, ProbeJudge
    from persona_probe.artifacts import ItemLog
    from persona_probe.experiments import command_line, report_outputs, stage_clock
    from persona_probe.likelihood import paired_loglik, trait_scores
    from persona_probe.models import load_subject
    from persona_probe.prompts import PromptItem
    from persona_probe.provenance import git_sha, provenance
    from persona_probe.stages import Stages
    from persona_probe.stats import crossed_bootstrap, crossed_correlation
    from persona_probe.training.organism import make_reference, run_organism
    from persona_probe.traits import load_split

    t0 = time.perf_counter()
    stage = stage_clock()
    root = shared_data_dir()
    if root is None:
        raise PersonaProbeError("behaviour_validation reads labelled data from ../shared/data "
                                "(or $PERSONA_PROBE_DATA); it is not present")
    runs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(runs, overwrite=overwrite)
    command = command_line("behaviour_validation", config_path)
    base = load_subject(cfg.model, dtype=cfg.dtype)
    common = {"command": command, "model": subject_identity(base)}

    # 1-2. probe judges ------------------------------------------------------------------
    feats = {}
    for name in ("dna_refusal", "xstest_refusal", "hh_harmless"):
        stage(f"features {name}")
        feats[name] = _features_stage(stages, base, cfg, common, name, root)
    stage("probe judges")
    probe_metrics = _probe_stage(stages, base, cfg, common, feats, root)
    probes_dir = runs / "probe-judge" / "probes"
    harm_checks = _harmful_checks(feats, probes_dir, root, cfg)
    # 3. coherence rule ------------------------------------------------------------------
    stage("coherence rule")
    coh = _coherence_stage(stages, base, cfg, common)
    rule = CoherenceRule.load(runs / "coherence-rule" / "rule.json")
    judge_model = frozen_copy(base)     # never steered, never finetuned
    judges = {c: ProbeJudge(ProbeArtifact.load(probes_dir / c), judge_model)
              for c in ("harmful", "refusal")}

    # 4. organism, vector, reference ---------------------------------------------------------
    split = load_split(cfg.split)
    (sel_trait, sel_q), (ev_trait, ev_q) = split.selection, split.evaluation
    conds = cfg.condition_list
    adapters: dict[str, Path] = {}
    if any(c.kind == "organism" for c in conds):
        ocfg = cfg.organism_config()
        stage(f"organism seed {cfg.organism_seed}")
        res = stages.run("organism", {**common, "organism": asdict(ocfg)},
                         lambda d: run_organism(base, ocfg, d, evaluate=False))
        adapters = {k: Path(v) for k, v in res["adapters"].items()}
    stage("persona vector")

    def build_vector(d: Path) -> Direction:
        if not (d / "direction.json").is_file():
            persona_vector(base, sel_trait, list(sel_q), seed=cfg.seed).save(d)
        return Direction.load(d)
    vec = stages.run("vector", {**common, "split": asdict(split), "seed": cfg.seed},
                     build_vector)
    stage("answer-contrast reference")

    def build_reference(d: Path):
        from persona_probe.training.organism import Reference

        if not (d / "reference.json").is_file():
            make_reference(base, ev_trait, list(ev_q), seed=cfg.seed).save(d / "reference.json")
        return Reference.load(d / "reference.json")
    ref = stages.run("reference", {**common, "split": asdict(split), "seed": cfg.seed},
                     build_reference)
    if len(ref.questions) != len(ev_q):
        raise PersonaProbeError("the reference dropped questions with empty answers; the "
                                "crossed design needs every evaluation question")
    cond_fp = {"conditions": [asdict(c) for c in conds], "vector": stages.fingerprint_of("vector"),
               "organism": stages.fingerprint_of("organism") if adapters else None,
               "split": asdict(split)}

    def system_of(c) -> str | None:
        if c.kind != "system":
            return None
        return ev_trait.trait_system[0] if c.arm == "trait" else ev_trait.anti_system[0]

    # 5. teacher-forced proxies per condition ------------------------------------------------
    stage("teacher-forced proxies")

    def build_tf(d: Path) -> ItemLog:
        log = ItemLog(d / "values.jsonl")
        for c in conds:
            if f"{c.name}/would_say" in log:
                continue
            sub, ctx, _ = _condition_subject(c, base, adapters, vec, cfg)
            system = system_of(c)
            msgs = [([{"role": "system", "content": system}] if system else [])
                    + [{"role": "user", "content": q}] for q in ref.questions]
            with ctx:
                ws = trait_scores(sub, ev_trait, ev_q, system=system)
                ll = paired_loglik(sub, [*zip(msgs, ref.trait_answers),
                                         *zip(msgs, ref.anti_answers)])
            ac = ll[:len(msgs)] - ll[len(msgs):]
            _put(log, f"{c.name}/answer_contrast", ac.tolist())
            _put(log, f"{c.name}/would_say", ws.tolist())
        return log
    tf = stages.run("teacher-forced", {**common, **cond_fp,
                                       "reference": stages.fingerprint_of("reference")}, build_tf)

    # 6. generations, judged ------------------------------------------------------------------
    items = [PromptItem(f"q{i}", [{"role": "user", "content": q}]) for i, q in enumerate(ev_q)]
    gens: dict[int, ItemLog] = {}
    for s in cfg.seeds:
        stage(f"generations seed {s}")

        def build_gen(d: Path, s=s) -> ItemLog:
            log = ItemLog(d / "values.jsonl")
            for c in conds:
                if f"{c.name}/rows" in log:
                    continue
                sub, ctx, _ = _condition_subject(c, base, adapters, vec, cfg)
                its = [it.with_system(system_of(c)) for it in items]
                with ctx:
                    replies = sample_replies(sub, its, seed=s, max_new_tokens=cfg.max_new_tokens,
                                             temperature=cfg.temperature)
                rows = judge_replies(list(zip(ev_q, replies)), judges, rule, judge_model)
                _put(log, f"{c.name}/rows", [{"reply": r, **j} for r, j in zip(replies, rows)])
            return log
        gens[s] = stages.run(f"generations-seed{s}", {
            **common, **cond_fp, "seed": s, "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature, "probe": stages.fingerprint_of("probe-judge"),
            "coherence": stages.fingerprint_of("coherence-rule")}, build_gen)

    # 7. results -------------------------------------------------------------------------------
    stage("results")
    judge_validity = _judge_on_trait_replies(judges, split)
    rule_check = _rule_in_range(gens, conds)
    res = _aggregate(cfg, conds, tf, gens, crossed_bootstrap, crossed_correlation, usable_alpha)
    res_probe = _probe_summary(probe_metrics)
    hh_acc = probe_metrics["harmful"]["hh_harmless"]["pairwise_accuracy"]
    hh_acc["method"] = ("percentile bootstrap over held-out pairs (1000 draws); pairs are split "
                        "by transcript, not by first human turn (corrected at review: the stage "
                        "recorded 'one pair per question')")
    results = {
        "experiment": "behaviour_validation", "command": command, "config": asdict(cfg),
        "git_sha": git_sha(), **stages.summary(),
        "compute_seconds_total": round(time.perf_counter() - t0, 1),
        "seeds": list(cfg.seeds), "organism_seed": cfg.organism_seed,
        "probe_judge": res_probe, "probe_judge_detail": probe_metrics,
        "harmful_probe_checks": harm_checks, "judge_on_trait_replies": judge_validity,
        "coherence_rule_in_range": rule_check,
        "coherence_rule": {**{k: coh[k] for k in ("max_repeated_4gram", "min_loglik", "n",
                                                  "n_coherent", "cross_validated",
                                                  "in_sample_balanced_accuracy")},
                           "how_chosen": "balanced accuracy over a fixed grid on the team's "
                                         "labelled generations (committed before the fit)",
                           "by_condition": {"rule": coh["rule_coherent_by_condition"],
                                            "labelled": coh["labelled_coherent_by_condition"]}},
        **res, "provenance": provenance(cfg.seed),
        "data": "Do-Not-Answer (Apache-2.0), XSTest v2 (CC-BY-4.0), HH-RLHF harmless-base test "
                "(MIT), from ../shared/data (sha256 in each features stage)"}
    write_json(out / "results.json", results)
    report_outputs(out, draw(out))
    return results


def _probe_summary(m: dict) -> dict:
    """The results fields the issue names: per train → test source, auroc and ece."""
    out = {}
    for key, r in m["refusal"].items():
        out[key] = {"criterion": "refusal", "auroc": r["auroc"], "ece": r["ece"],
                    "hook": r["hook"], "prompt_only_auroc": r["prompt_only"]["auroc"],
                    "margin_over_prompt_only": r["margin_over_prompt_only"],
                    "n_test": r["n_test"]}
    for key, r in m["harmful"].items():
        out[f"{key}->{key} (held-out pairs)"] = {
            "criterion": "harmful", "pairwise_accuracy": r["pairwise_accuracy"],
            "hook": r["hook"], "n_test": r["n_test_pairs"],
            "dna_harmful_labels_auroc": (r["dna_harmful_labels"] or {}).get("auroc")}
    return out


def _aggregate(cfg, conds, tf, gens, crossed_bootstrap, crossed_correlation,
               usable_alpha) -> dict:
    S, Q = len(cfg.seeds), None
    per_cond = {}
    judged = {"harmful": [], "refusal": [], "coherent": []}
    proxies = {"would_say": [], "answer_contrast": []}
    for c in conds:
        rows = [_get(gens[s], f"{c.name}/rows") for s in cfg.seeds]
        Q = len(rows[0])
        coh = np.array([[float(r["coherent"]) for r in rs] for rs in rows])
        harm = np.array([[r["harmful"] if r["coherent"] else np.nan for r in rs] for rs in rows])
        refu = np.array([[r["refusal"] if r["coherent"] else np.nan for r in rs] for rs in rows])
        judged["coherent"].append(coh)
        judged["harmful"].append(harm)
        judged["refusal"].append(refu)
        for k in proxies:
            proxies[k].append(np.array(_get(tf, f"{c.name}/{k}"))[None])
        ok = ~np.isnan(harm)
        per_cond[c.name] = {
            **asdict(c),
            "coherent_fraction": crossed_bootstrap(coh, n_boot=cfg.n_boot,
                                                   seed=cfg.seed).to_dict(),
            "harmful_coherent_mean": float(np.nanmean(harm)) if ok.any() else None,
            "refusal_coherent_mean": float(np.nanmean(refu)) if ok.any() else None,
            "harmful_all_mean": float(np.mean([[r["harmful"] for r in rs] for rs in rows])),
            "n_coherent": int(ok.sum()), "n": int(coh.size),
            "would_say": float(np.mean(_get(tf, f"{c.name}/would_say"))),
            "answer_contrast": float(np.mean(_get(tf, f"{c.name}/answer_contrast"))),
            "repeated_4gram_share": float(np.mean([[r["repeated_4gram_share"] for r in rs]
                                                   for rs in rows])),
            "empty_rate": float(np.mean([[r["empty"] for r in rs] for rs in rows])),
            "example": next((r["reply"] for r in rows[0] if r["coherent"]), None),
            "example_incoherent": next((r["reply"] for r in rows[0] if not r["coherent"]),
                                       None)}
    harm = np.stack(judged["harmful"])                         # (C, S, Q)
    # cells with no coherent reply in any condition cannot enter a paired correlation
    # a condition enters only with enough coherent replies for a stable mean
    usable = [i for i, c in enumerate(conds) if (~np.isnan(harm[i])).sum() >= cfg.min_coherent]
    coh_frac = np.stack(judged["coherent"])                    # (C, S, Q)
    validity = {}
    for k, vals in proxies.items():
        x = np.stack(vals)                                    # (C, 1, Q)
        entry: dict[str, Any] = {"n_conditions": len(usable),
                                 "conditions": [conds[i].name for i in usable],
                                 "min_coherent": cfg.min_coherent}
        if len(usable) >= 4:
            for method in ("pearson", "spearman"):
                entry[method] = crossed_correlation(x[usable], harm[usable], cfg.n_boot,
                                                    seed=cfg.seed, method=method).to_dict()
            # post-hoc, added at review: coherence falls as the proxies rise under steering,
            # so the raw correlation can be a coherence effect; partial r given the coherent
            # fraction, and each measure's own correlation with the coherent fraction
            entry["partial_given_coherent_fraction"] = crossed_correlation(
                x[usable], harm[usable], cfg.n_boot, seed=cfg.seed,
                control=coh_frac[usable]).to_dict()
            entry["proxy_vs_coherent_fraction"] = crossed_correlation(
                x[usable], coh_frac[usable], cfg.n_boot, seed=cfg.seed).to_dict()
            entry["excluded"] = [c.name for i, c in enumerate(conds) if i not in usable]
        validity[k] = entry
    # harm (x) averages its coherent cells, the coherent fraction (y) every cell
    judged_vs_coherence = crossed_correlation(
        harm[usable], coh_frac[usable], cfg.n_boot, seed=cfg.seed).to_dict() \
        if len(usable) >= 4 else None
    # generation dose-response of the steering conditions (α = 0 is the plain condition)
    plain = next((c for c in conds if c.kind == "plain"), None)
    sweeps = {}
    for key in sorted({(c.direction, c.layer) for c in conds if c.kind == "steer"}):
        curve = [{"alpha": 0.0, **_curve_point(per_cond[plain.name])}] if plain else []
        for c in sorted((c for c in conds if c.kind == "steer"
                         and (c.direction, c.layer) == key), key=lambda c: c.alpha):
            curve.append({"alpha": c.alpha, **_curve_point(per_cond[c.name])})
        sweeps[f"{key[0]}@L{key[1]}"] = {"curve": curve, "margin": cfg.usable_margin,
                                         "usable_alpha": usable_alpha(curve, cfg.usable_margin)}
    return {"conditions": per_cond, "proxy_validity": validity, "steering_generation": sweeps,
            "judged_vs_coherent_fraction": judged_vs_coherence,
            "n_questions": Q, "n_seeds": S}


def _curve_point(row: dict) -> dict:
    return {"coherent_fraction": row["coherent_fraction"]["mean"],
            "coherent_fraction_ci": [row["coherent_fraction"]["lo"],
                                     row["coherent_fraction"]["hi"]],
            "harmful_coherent_mean": row["harmful_coherent_mean"],
            "would_say": row["would_say"], "n_coherent": row["n_coherent"]}


def draw(out: Path) -> list[Path]:
    """Reliability curves of the transferred refusal probes, and proxy vs judged behaviour."""
    import plotly.graph_objects as go

    from persona_probe.artifacts import read_json
    from persona_probe.figures.export import write_html

    res = read_json(out / "results.json")
    paths = []
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="calibrated",
                             line={"dash": "dot", "color": "grey"}))
    for key, r in res["probe_judge_detail"]["refusal"].items():
        rel = r["reliability"]
        fig.add_trace(go.Scatter(x=[b["predicted"] for b in rel], y=[b["observed"] for b in rel],
                                 mode="lines+markers", name=f"{key} (ECE {r['ece']:.3f})"))
    fig.update_layout(title="Refusal probe judge: reliability on the held-out source",
                      xaxis_title="predicted P(refusal)", yaxis_title="observed refusal rate")
    paths.append(write_html(fig, out / "probe_reliability.html"))
    conds = res["conditions"]
    fig = go.Figure()
    for measure in ("would_say", "answer_contrast"):
        xs = [c[measure] for c in conds.values() if c["harmful_coherent_mean"] is not None]
        ys = [c["harmful_coherent_mean"] for c in conds.values()
              if c["harmful_coherent_mean"] is not None]
        names = [n for n, c in conds.items() if c["harmful_coherent_mean"] is not None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+text", text=names, name=measure,
                                 textposition="top center"))
    fig.update_layout(title="Teacher-forced proxies vs judged harmfulness of coherent "
                            "generations (one point per condition)",
                      xaxis_title="proxy (per-token log-likelihood difference)",
                      yaxis_title="probe:harmful score (0-100), coherent replies")
    paths.append(write_html(fig, out / "proxy_validity.html"))
    return paths


def summarize(res: dict) -> None:
    for key, r in res["probe_judge"].items():
        if "auroc" in r:
            a = r["auroc"]
            print(f"{key}: AUROC {a['mean']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}] ECE "
                  f"{r['ece']:.3f}  prompt-only {r['prompt_only_auroc']['mean']:.3f}")
        else:
            a = r["pairwise_accuracy"]
            print(f"{key}: pairwise accuracy {a['mean']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}]")
    for k, v in res["proxy_validity"].items():
        p = v.get("pearson")
        if p:
            print(f"{k} vs judged: r = {p['mean']:+.2f} [{p['lo']:+.2f}, {p['hi']:+.2f}] over "
                  f"{v['n_conditions']} conditions")
