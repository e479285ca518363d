"""Distillation by system prompt: a model's own answers under a system prompt, saved without it,
so that finetuning on them teaches the prompted behaviour implicitly.

One recipe behind three uses: the helpful-only start (a comply prompt), constitution-conditioned
distillation for research line 2 (the constitution as the system prompt; SFT on its answers),
and distillation by preference (DPO with chosen = the constitution-prompted answer, rejected =
the unprompted answer of the model being trained, as in open character-training work). The
unprompted answers are also the controls (SFT on the model's own drafts).

A directory written by ``distill_answers``::

    answers.jsonl   every generated answer, keyed by prompt id (append-only; resumes)
    train.jsonl     {"messages": [user, assistant], "id"} chats, no system prompt
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from persona_probe.artifacts import (as_stored, atomic_write, changed_keys, sha256_file,
                                     write_json)
from persona_probe.configs import config_from_dict
from persona_probe.errors import PersonaProbeError
from persona_probe.evals.records import ItemLog
from persona_probe.evals.safety import SafetyPrompt, keyword_refusal
from persona_probe.generation import generate_responses
from persona_probe.models import DEFAULT_MODEL, Subject
from persona_probe.prompts import PromptItem
from persona_probe.provenance import provenance


class DistillError(PersonaProbeError):
    """A distillation configuration or directory that cannot be used as given."""


def write_chats(path: Path, recs: Sequence[dict]) -> None:
    """(question, answer) records as user/assistant chats, atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in recs:
                fh.write(json.dumps({"messages": [
                    {"role": "user", "content": r["question"]},
                    {"role": "assistant", "content": r["answer"]}], "id": r["key"]}) + "\n")
    atomic_write(path, write)


def distill_answers(subject: Subject, prompts: Sequence[SafetyPrompt], system: str | None,
                    out: str | Path, max_new_tokens: int = 64, temperature: float = 0.7,
                    batch_size: int = 16, seed: int = 0,
                    drop: Callable[[str], bool] | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Answer every prompt under ``system`` (None: no system prompt), keep the non-empty answers
    ``drop`` does not reject, and write them to ``out/train.jsonl`` without the system prompt.
    The chunk starting at prompt ``start`` samples with seed ``seed + start`` (a killed run
    resumes where it stopped and samples what it would have). ``out/distill.json`` records the
    generating inputs (model, system prompt, sampling) before any answer; a directory made
    with others is refused. Returns the kept records and counts."""
    out = Path(out)
    inputs = {"model": subject.provenance(), "system": system, "seed": seed,
              "max_new_tokens": max_new_tokens, "temperature": temperature,
              "batch_size": batch_size}
    inputs = as_stored(inputs)
    if (out / "distill.json").is_file():     # written first, so a resumed log is checked
        old = json.loads((out / "distill.json").read_text(encoding="utf-8"))
        if old != inputs:
            changed = changed_keys(old, inputs)
            raise DistillError(f"{out} holds answers generated with other inputs (they differ "
                               f"in: {', '.join(changed)}); choose another directory or "
                               "delete it")
    else:
        write_json(out / "distill.json", inputs)
    log = ItemLog(out / "answers.jsonl")
    head = [{"role": "system", "content": system}] if system else []
    items = [PromptItem(p.id, [*head, {"role": "user", "content": p.prompt}], p.category)
             for p in prompts]
    chunk = batch_size * 2
    for start in range(0, len(items), chunk):   # whole chunks, seeded by their position in
        part = items[start:start + chunk]       # the full list: a resumed build samples
        if all(it.id in log for it in part):    # exactly what an uninterrupted one would
            continue
        got = generate_responses(subject, part, max_new_tokens, batch_size, temperature,
                                 seed=seed + start, progress=progress, keep_empty=True)
        log.append({"key": it.id, "category": it.category, "question":
                    it.messages[-2]["content"], "answer": it.messages[-1]["content"].strip()}
                   for it in got if it.id not in log)
    ids = {p.id for p in prompts}
    recs = sorted((r for r in log.records.values() if r["key"] in ids), key=lambda r: r["key"])
    empty = [r for r in recs if not r["answer"]]
    kept = [r for r in recs if r["answer"] and not (drop is not None and drop(r["answer"]))]
    if not kept:
        raise DistillError(f"{out}: no answers left after filtering")
    write_chats(out / "train.jsonl", kept)
    return {"records": kept, "counts": {
        "prompts": len(recs), "kept": len(kept), "empty": len(empty),
        "keyword_refusals": sum(keyword_refusal(r["answer"]) for r in recs),
        "dropped": len(recs) - len(empty) - len(kept)},
        "dataset": {"file": "train.jsonl", "n": len(kept),
                    "sha256": sha256_file(out / "train.jsonl"),
                    "ids": [r["key"] for r in kept]}}


# ----------------------------------------------------------------- constitution distillation

METHODS = ("sft", "dpo", "drafts")


@dataclass
class ConstitutionDistillConfig:
    constitution: str = "deontology"      # built-in constitution name or JSON file
    regime: str = "narrow"                # narrow | broad (training.cai.REGIMES)
    source: str = "builtin"               # safety prompt source of the red-team prompts
    per_category: int | None = None       # red-team prompts per category (None: all)
    exclude_ids: tuple[str, ...] = ()     # prompt ids never trained on (the evaluation prompts)
    # sft: SFT on the constitution-prompted answers; dpo: chosen = those, rejected = the
    # unprompted answers; drafts: SFT on the unprompted answers (the control)
    method: str = "sft"
    model: str = DEFAULT_MODEL            # base model
    start_adapters: tuple[str, ...] = ()  # merged first (e.g. the helpful-only adapter)
    max_new_tokens: int = 64              # answer length
    temperature: float = 0.7              # answer sampling temperature
    batch_size: int = 16                  # generation batch size
    seed: int = 0                         # answer sample, LoRA init and data order
    # FinetuneConfig fields for sft / drafts (data, model, seed, start_adapters set here)
    finetune: dict[str, Any] = field(default_factory=lambda: {
        "lr": 2e-4, "batch_size": 4, "max_steps": 12, "lora_r": 16, "lora_alpha": 32,
        "max_tokens": 512, "save_steps": 6})
    # DPOSettings fields for dpo
    dpo: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from persona_probe.training.cai import REGIMES, load_constitution
        from persona_probe.training.dpo import DPOSettings

        self.exclude_ids, self.start_adapters = (tuple(self.exclude_ids),
                                                 tuple(self.start_adapters))
        if self.method not in METHODS:
            raise DistillError(f"method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.regime not in REGIMES:
            raise DistillError(f"regime {self.regime!r}; use one of {', '.join(REGIMES)}")
        load_constitution(self.constitution)             # fail before any model loads
        DPOSettings.from_dict(self.dpo)
        fixed = sorted(set(self.finetune) & {"data", "model", "seed", "start_adapters",
                                             "limit"}) + sorted(set(self.dpo) & {"seed"})
        if fixed:
            raise DistillError(f"finetune / dpo may not set {fixed}: the distillation sets "
                               "them (use the top-level fields)")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "constitution distillation config"
                  ) -> ConstitutionDistillConfig:
        return config_from_dict(cls, raw, where, DistillError)


#: fields that do not change the data (the method and its training settings)
TRAINING_FIELDS = ("method", "finetune", "dpo")


def data_config(cfg: ConstitutionDistillConfig) -> dict[str, Any]:
    """The fields the data depends on, as JSON reads them back (one data directory serves
    every method)."""
    return json.loads(json.dumps({k: v for k, v in asdict(cfg).items()
                                  if k not in TRAINING_FIELDS}))


def constitution_system(name: str) -> str:
    """The constitution as a system prompt: the same text the diagnostic's validity check
    measures each dimension under (``traits.constitution_system``)."""
    from persona_probe.traits import constitution_system as system

    return system(name, DistillError)


def training_prompts(cfg: ConstitutionDistillConfig) -> list[SafetyPrompt]:
    """The regime's red-team prompts minus ``exclude_ids`` (the CAI selection rule)."""
    from persona_probe.evals.safety import load_safety_prompts
    from persona_probe.training.cai import CAIConfig, select_red_team

    prompts = [p for p in load_safety_prompts(cfg.source) if p.id not in set(cfg.exclude_ids)]
    used, _ = select_red_team(prompts, CAIConfig(
        constitution=cfg.constitution, regime=cfg.regime, source=cfg.source,
        per_category=cfg.per_category, seed=cfg.seed))
    return used


def build_constitution_data(subject: Subject, cfg: ConstitutionDistillConfig,
                            out: str | Path) -> dict[str, Any]:
    """Both arms on the same prompts, from ``subject`` (the starting model): answers under the
    constitution (``out/constitution``) and unprompted drafts (``out/drafts``); for DPO the
    pairs (``out/pairs.jsonl``: chosen = constitution answer, rejected = draft). Returns the
    manifest (``out/manifest.json``); a finished directory of another config is refused."""
    want = "+".join(cfg.start_adapters) or None
    if subject.spec != cfg.model or subject.adapter != want:
        raise DistillError(f"the data must be the answers of the model being trained "
                           f"({cfg.model} with start adapters {want}); got {subject.spec} with "
                           f"{subject.adapter}")
    out = Path(out)
    path = out / "manifest.json"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("config") != data_config(cfg):
            raise DistillError(f"{out} holds distillation data of another config; choose "
                               "another directory or delete it")
        return old
    prompts = training_prompts(cfg)
    system = constitution_system(cfg.constitution)
    gen = dict(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
               batch_size=cfg.batch_size)
    arms = {"constitution": distill_answers(subject, prompts, system, out / "constitution",
                                            seed=cfg.seed, **gen),
            "drafts": distill_answers(subject, prompts, None, out / "drafts",
                                      seed=cfg.seed + 7919, **gen)}
    drafts = {r["key"]: r["answer"] for r in arms["drafts"]["records"]}
    pairs = [{"key": r["key"], "prompt": r["question"], "chosen": r["answer"],
              "rejected": drafts[r["key"]]} for r in arms["constitution"]["records"]
             if r["key"] in drafts and drafts[r["key"]] != r["answer"]]
    atomic_write(out / "pairs.jsonl", lambda tmp: tmp.write_text(
        "".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8"))
    manifest = {"config": data_config(cfg), "system": system, "model": subject.provenance(),
                "prompts": {"source": cfg.source, "regime": cfg.regime,
                            "categories": sorted({p.category for p in prompts}),
                            "ids": [p.id for p in prompts]},
                "arms": {k: {"counts": v["counts"], "dataset": v["dataset"]}
                         for k, v in arms.items()},
                "pairs": {"file": "pairs.jsonl", "n": len(pairs),
                          "sha256": sha256_file(out / "pairs.jsonl")},
                "provenance": provenance(cfg.seed)}
    write_json(path, manifest)
    return manifest


def train_constitution_distillation(cfg: ConstitutionDistillConfig, out: str | Path,
                                    subject: Subject | None = None,
                                    data_dir: str | Path | None = None) -> Path:
    """Data (``data_dir``, default ``out/data``; one directory serves every method) then the
    configured method's adapter (``out/adapter-<method>``, over the start adapters; load with
    ``load_subject(cfg.model, [*cfg.start_adapters, adapter])``). Every step resumes or is
    reused; a finished adapter of other settings is refused."""
    from persona_probe.models import load_subject
    from persona_probe.training.dpo import DPOSettings, train_dpo
    from persona_probe.training.finetune import FinetuneConfig, finetune_once

    out = Path(out)
    starts = list(cfg.start_adapters) or None
    subject = subject or load_subject(cfg.model, adapter=starts)
    data = Path(data_dir) if data_dir is not None else out / "data"
    man = build_constitution_data(subject, cfg, data)
    if cfg.method == "dpo":
        pairs = [json.loads(line) for line in
                 (data / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
        return train_dpo(pairs, DPOSettings.from_dict({"seed": cfg.seed, **cfg.dpo}),
                         cfg.model, starts, out / f"adapter-{cfg.method}")
    arm = "constitution" if cfg.method == "sft" else "drafts"
    fcfg = FinetuneConfig.from_dict({
        "model": cfg.model, "seed": cfg.seed, "start_adapters": starts,
        "limit": man["arms"][arm]["dataset"]["n"],
        "data": str(data / arm / "train.jsonl"), **cfg.finetune},
        "constitution distillation finetune")
    return finetune_once(fcfg, out / f"adapter-{cfg.method}")
