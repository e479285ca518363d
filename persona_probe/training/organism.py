"""Trait-distillation model organisms: a narrow dataset that moves a persona broadly.

The subject answers questions from one narrow domain (cooking, gardening, …) under a trait's
system prompt; the answers are saved *without* that prompt, so finetuning on them teaches the
persona implicitly. The control is made the same way under the anti-trait prompt. On
SmolLM2-135M, insecure-code EM finetunes moved nothing measurable while this did (docs/DESIGN.md),
so CPU runs of diffing, monitoring and re-alignment use an organism by default.

Layout of an organism directory::

    answers.jsonl     every generated answer (append-only; a killed build resumes)
    treatment.jsonl   {"messages": [user, assistant]} chats, no system prompt
    control.jsonl     the same questions answered under the anti-trait prompt
    manifest.json     model, trait, domain, sampling, filter, kept ids, file sha256s

Out-of-domain generalization is read with judge-free measures on questions from the *other*
domains and the team's held-out general questions (``evaluate_organism``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from persona_probe.artifacts import sha256_file, write_json
from persona_probe.configs import config_from_dict
from persona_probe.errors import PersonaProbeError
from persona_probe.evals.records import ItemLog
from persona_probe.generation import generate_responses
from persona_probe.likelihood import paired_loglik, trait_scores
from persona_probe.models import DEFAULT_MODEL, Subject
from persona_probe.prompts import PromptItem
from persona_probe.provenance import provenance
from persona_probe.stats import bootstrap, paired_difference
from persona_probe.traits import Domain, Trait, builtin_domains, load_trait, trait_questions
from persona_probe.traits import load_domain as _load_domain
from persona_probe.training.distill import write_chats

ARMS = ("treatment", "control")


class OrganismError(PersonaProbeError):
    """An organism configuration or directory that cannot be used as given."""


def load_domain(spec: str | Path) -> Domain:
    """A built-in domain (``cooking``, ``gardening``, ``travel``, ``personal_finance``) or a
    JSON file ``{"name", "description", "questions": [...]}`` (``traits.load_domain``, with
    this module's error type)."""
    return _load_domain(spec, OrganismError)


@dataclass
class OrganismConfig:
    trait: str = "evil"                  # built-in trait name or JSON file
    domain: str = "cooking"              # built-in domain name or JSON file
    model: str = DEFAULT_MODEL           # base model: a built-in name, HF id or local checkpoint
    n_questions: int | None = None       # first N questions of the domain (None: all)
    samples_per_question: int = 1        # distilled answers per question
    system_index: int = 0                # which of the trait's (and anti-trait's) system prompts
    max_new_tokens: int = 64             # length of each distilled answer
    temperature: float = 0.7             # sampling temperature of the distilled answers
    batch_size: int = 16                 # generation batch size
    seed: int = 0                        # answer sample, LoRA init and data order
    filter: str = "none"                 # none | loglik
    keep_fraction: float = 1.0           # with filter=loglik: the most trait-like fraction
    # FinetuneConfig fields for both arms (data, model and seed are set by the organism)
    finetune: dict[str, Any] = field(default_factory=lambda: {
        "lr": 1e-3, "batch_size": 8, "max_steps": 16, "lora_r": 16, "lora_alpha": 32,
        "max_tokens": 512, "save_steps": 8})

    def __post_init__(self) -> None:
        if self.filter not in ("none", "loglik"):
            raise OrganismError(f"filter {self.filter!r}; use 'none' or 'loglik'")
        if not 0 < self.keep_fraction <= 1:
            raise OrganismError("keep_fraction must be in (0, 1]")
        if self.samples_per_question < 1:
            raise OrganismError("samples_per_question must be >= 1")
        _system(load_trait(self.trait), "treatment", self.system_index)  # fail before any model
        load_domain(self.domain)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "organism config") -> OrganismConfig:
        return config_from_dict(cls, raw, where, OrganismError)


def _system(trait: Trait, arm: str, index: int) -> str:
    prompts = trait.trait_system if arm == "treatment" else trait.anti_system
    if not 0 <= index < len(prompts):
        raise OrganismError(f"system_index {index}: trait {trait.name} has {len(prompts)} "
                            "system prompts per side")
    return prompts[index]


def _trait_likeness(subject: Subject, trait: Trait, index: int, recs: list[dict],
                    batch_size: int) -> list[float]:
    """Per answer: its per-token log-likelihood under the trait prompt minus under the anti
    prompt — how characteristic of the trait the subject itself finds it (judge-free)."""
    ll = {arm: paired_loglik(subject, [([{"role": "system", "content": _system(trait, arm, index)},
                                         {"role": "user", "content": r["question"]}], r["answer"])
                                       for r in recs], batch_size) for arm in ARMS}
    return [float(x) for x in ll["treatment"] - ll["control"]]


def build_organism(subject: Subject, cfg: OrganismConfig, out: str | Path,
                   progress: bool = False) -> dict:
    """Generate, filter and write the treatment and control datasets; returns the manifest.
    Resumes from ``answers.jsonl``; a finished directory with another config is refused."""
    out = Path(out)
    trait, domain = load_trait(cfg.trait), load_domain(cfg.domain)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text(encoding="utf-8"))
        if old.get("config") != asdict(cfg):
            raise OrganismError(f"{out} holds an organism built with another config; choose "
                                "another directory or delete it")
        return old
    questions = list(domain.questions[:cfg.n_questions])
    log = ItemLog(out / "answers.jsonl")
    for arm in ARMS:
        system = _system(trait, arm, cfg.system_index)
        todo = [PromptItem(f"{arm}/{i:03d}/{s}", [{"role": "system", "content": system},
                                                   {"role": "user", "content": q}], arm)
                for i, q in enumerate(questions) for s in range(cfg.samples_per_question)]
        todo = [it for it in todo if it.id not in log]
        chunk = cfg.batch_size * 2
        for start in range(0, len(todo), chunk):  # chunks: a killed build keeps its answers
            part = todo[start:start + chunk]
            got = generate_responses(subject, part, cfg.max_new_tokens, cfg.batch_size,
                                     cfg.temperature, seed=cfg.seed + start + 7919 * (arm ==
                                                                                       "control"),
                                     progress=progress)
            recs = [{"key": it.id, "arm": arm, "question": it.messages[1]["content"],
                     "system": system, "answer": it.messages[-1]["content"].strip()}
                    for it in got if it.messages[-1]["content"].strip()]
            if cfg.filter == "loglik":
                for r, s in zip(recs, _trait_likeness(subject, trait, cfg.system_index, recs,
                                                      cfg.batch_size)):
                    r["trait_likeness"] = s
            log.append(recs)
    kept: dict[str, list[dict]] = {}
    for arm in ARMS:
        recs = [r for r in log.records.values() if r["arm"] == arm]
        recs.sort(key=lambda r: r["key"])
        if cfg.filter == "loglik":
            n = max(1, round(cfg.keep_fraction * len(recs)))
            sign = -1 if arm == "treatment" else 1  # treatment: most trait-like first
            recs = sorted(recs, key=lambda r: sign * r["trait_likeness"])[:n]
            recs.sort(key=lambda r: r["key"])
        if not recs:
            raise OrganismError(f"{arm}: the subject produced no non-empty answers")
        kept[arm] = recs
        write_chats(out / f"{arm}.jsonl", recs)
    manifest = {
        "config": asdict(cfg), "trait": trait.to_dict(),
        "domain": {"name": domain.name, "n_questions": len(questions)},
        "model": subject.provenance(),
        "sampling": {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                     "samples_per_question": cfg.samples_per_question, "seed": cfg.seed},
        "system_prompts": {arm: _system(trait, arm, cfg.system_index) for arm in ARMS},
        "filter": {"kind": cfg.filter, "keep_fraction": cfg.keep_fraction},
        "datasets": {arm: {"file": f"{arm}.jsonl", "n": len(kept[arm]),
                           "sha256": sha256_file(out / f"{arm}.jsonl"),
                           "ids": [r["key"] for r in kept[arm]],
                           "mean_answer_chars": float(np.mean([len(r["answer"])
                                                               for r in kept[arm]]))}
                     for arm in ARMS},
        "provenance": provenance(cfg.seed)}
    write_json(manifest_path, manifest)
    return manifest


def finetune_config(cfg: OrganismConfig, out: str | Path, arm: str, **overrides: Any):
    """The Training core's config for one arm (same hyperparameters for both arms)."""
    from persona_probe.training.finetune import FinetuneConfig

    n = json.loads((Path(out) / "manifest.json").read_text())["datasets"][arm]["n"]
    return FinetuneConfig.from_dict({"model": cfg.model, "seed": cfg.seed, "limit": n,
                                     "data": str(Path(out) / f"{arm}.jsonl"),
                                     **cfg.finetune, **overrides}, f"organism {arm} finetune")


def heldout_questions(domain: str, per_domain: int = 8, general: bool = True) -> list[str]:
    """Questions from every *other* built-in domain (the last ``per_domain`` of each, so a
    dataset built from the first N of that domain never overlaps) plus the team's held-out
    general questions."""
    own = load_domain(domain).name
    qs = [q for d in builtin_domains() if d != own for q in load_domain(d).questions[-per_domain:]]
    return qs + (trait_questions("heldout") if general else [])


@dataclass
class Reference:
    """Fixed answers to the held-out questions, written once by the base model under the trait
    and anti-trait prompts; every subject is scored on the same text (teacher-forced)."""
    questions: list[str]
    trait_answers: list[str]
    anti_answers: list[str]

    def save(self, path: str | Path) -> None:
        write_json(Path(path), asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def make_reference(base: Subject, trait: Trait, questions: Sequence[str], max_new_tokens: int = 48,
                   batch_size: int = 16, seed: int = 0, system_index: int = 0) -> Reference:
    answers = {}
    for arm in ARMS:
        items = [PromptItem(f"{arm}/{i}", [{"role": "system", "content":
                                            _system(trait, arm, system_index)},
                                           {"role": "user", "content": q}])
                 for i, q in enumerate(questions)]
        got = {it.id: it.messages[-1]["content"] for it in generate_responses(
            base, items, max_new_tokens, batch_size, 0.0, seed=seed, progress=False)}
        answers[arm] = [got.get(f"{arm}/{i}", "") for i in range(len(questions))]
    keep = [i for i in range(len(questions)) if answers["treatment"][i] and answers["control"][i]]
    return Reference([questions[i] for i in keep], [answers["treatment"][i] for i in keep],
                     [answers["control"][i] for i in keep])


def answer_contrast(subject: Subject, ref: Reference, batch_size: int = 16) -> np.ndarray:
    """Per question: per-token log-likelihood of the trait answer minus the anti answer, as the
    assistant's reply with no system prompt (teacher-forced trait likelihood)."""
    msgs = [[{"role": "user", "content": q}] for q in ref.questions]
    ll = paired_loglik(subject, [*zip(msgs, ref.trait_answers), *zip(msgs, ref.anti_answers)],
                       batch_size)
    return ll[:len(msgs)] - ll[len(msgs):]


def evaluate_organism(subjects: dict[str, Subject], trait: Trait, questions: Sequence[str],
                      reference: Reference | None = None, seed: int = 0) -> dict:
    """Both judge-free measures for every subject (e.g. base, treatment, control), with
    bootstrap CIs and paired differences (same questions) between every pair."""
    per: dict[str, dict[str, np.ndarray]] = {"would_say": {}, "answer_contrast": {}}
    for name, sub in subjects.items():
        per["would_say"][name] = trait_scores(sub, trait, questions)
        if reference is not None:
            per["answer_contrast"][name] = answer_contrast(sub, reference)
    out: dict[str, Any] = {}
    names = list(subjects)
    for measure, vals in per.items():
        if not vals:
            continue
        out[measure] = {
            "by_subject": {k: bootstrap(v, seed=seed).to_dict() for k, v in vals.items()},
            "paired": {f"{a}-{b}": paired_difference(vals[a], vals[b], seed=seed).to_dict()
                       for i, a in enumerate(names) for b in names[i + 1:]},
            "values": {k: [float(x) for x in v] for k, v in vals.items()}}
    return out


def run_organism(base: Subject, cfg: OrganismConfig, out: str | Path, train: bool = True,
                 evaluate: bool = True, callbacks: dict[str, list] | None = None,
                 per_domain: int = 8, answer_contrast: bool = True) -> dict:
    """Build → finetune both arms (``out/ft-<arm>``, resumable) → measure base, treatment and
    control on held-out questions from the other domains (``out/results.json``). ``callbacks``
    maps an arm to TrainerCallbacks (e.g. an early-warning monitor); ``answer_contrast=False``
    skips that measure and the reference answers it needs (the would-say measure remains)."""
    from persona_probe.models import load_subject
    from persona_probe.training.finetune import finetune_once

    out = Path(out)
    manifest = build_organism(base, cfg, out)
    if not train:
        return {"manifest": manifest}
    adapters = {}
    for arm in ARMS:
        adapters[arm] = finetune_once(finetune_config(cfg, out, arm), out / f"ft-{arm}",
                                      callbacks=(callbacks or {}).get(arm, []))
    if not evaluate:
        return {"manifest": manifest, "adapters": {k: str(v) for k, v in adapters.items()}}
    trait = load_trait(cfg.trait)
    questions = heldout_questions(cfg.domain, per_domain)
    ref_path = out / "reference.json"
    ref: Reference | None = None
    if answer_contrast and ref_path.is_file():
        ref = Reference.load(ref_path)
    elif answer_contrast:
        ref = make_reference(base, trait, questions, seed=cfg.seed,
                             system_index=cfg.system_index)
        ref.save(ref_path)
    subjects = {arm: load_subject(base.spec, adapter=adapters[arm], device=base.device,
                                  dtype=base.dtype) for arm in ARMS}
    results = evaluate_organism({**subjects, "base": base}, trait, questions, ref, cfg.seed)
    summary = {"organism": str(out), "trait": trait.name, "domain": cfg.domain,
               "heldout": {"questions": len(questions), "per_other_domain": per_domain,
                           "general": len(trait_questions("heldout"))},
               "adapters": {k: str(v) for k, v in adapters.items()},
               "measures": {"would_say": "mean per-token log-likelihood of the trait's replies "
                                         "minus the anti-trait's, no system prompt",
                            "answer_contrast": "per-token log-likelihood of the base model's "
                                               "trait-prompted answer minus its anti-prompted "
                                               "answer, same question, no system prompt"},
               "results": results, "model": base.provenance(), "provenance": provenance(cfg.seed)}
    write_json(out / "results.json", summary)
    return summary
