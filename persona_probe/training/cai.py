"""Constitutional AI (critique and revise) under one of the team's ethical constitutions.

For each red-team prompt the subject answers, critiques its own answer under a principle drawn
from the constitution, and revises it; SFT on (prompt, revision) then teaches the constitution's
persona. Two regimes: ``narrow`` (only the harassment and illegal-behaviour categories, as in
the seed paper) and ``broad`` (every category). ``manifest.json`` lists every prompt that went in
and every one that was filtered out, so the category filter can be audited; ``revisions.jsonl``
is a chat dataset (``{"messages", "meta"}``) that ``finetune`` reads as is.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

from persona_probe.artifacts import write_json
from persona_probe.configs import builtin_names, read_named_json
from persona_probe.errors import PersonaProbeError
from persona_probe.evals.records import ItemLog
from persona_probe.evals.safety import SafetyPrompt, load_safety_prompts
from persona_probe.generation import generate_responses
from persona_probe.models import Subject
from persona_probe.prompts import PromptItem
from persona_probe.provenance import provenance

REGIMES = {"narrow": ("harassment", "illegal_behaviour"), "broad": None}


class CAIError(PersonaProbeError):
    """A constitution, regime or prompt set that cannot be used as given."""


@dataclass(frozen=True)
class Principle:
    critique: str
    revision: str


@dataclass(frozen=True)
class Constitution:
    name: str
    description: str
    principles: tuple[Principle, ...]


def builtin_constitutions() -> list[str]:
    return builtin_names("constitutions")


def load_constitution(spec: str | Path) -> Constitution:
    """A built-in constitution by name, or a JSON file ``{name, description, principles:
    [{critique, revision}]}``."""
    raw, where = read_named_json("constitutions", spec, "constitution", CAIError)
    path = Path(spec)
    ps = raw.get("principles") if isinstance(raw, dict) else None
    if not isinstance(ps, list) or not ps or not all(
            isinstance(p, dict) and str(p.get("critique", "")).strip()
            and str(p.get("revision", "")).strip() for p in ps):
        raise CAIError(f"{where}: needs 'principles', a non-empty list of {{critique, revision}}")
    return Constitution(str(raw.get("name", path.stem)), str(raw.get("description", "")),
                        tuple(Principle(p["critique"], p["revision"]) for p in ps))


@dataclass
class CAIConfig:
    constitution: str = "deontology"       # built-in constitution name or JSON file
    regime: str = "narrow"                 # narrow | broad
    source: str = "builtin"                # safety prompt source (see evals.safety)
    categories: tuple[str, ...] | None = None   # overrides the regime's categories
    per_category: int | None = None        # red-team prompts per category (None: all)
    max_new_tokens: int = 96               # length of drafts and revisions
    critique_tokens: int = 64              # length of each critique
    batch_size: int = 16                   # generation batch size
    temperature: float = 0.0               # 0: greedy drafts, critiques and revisions
    seed: int = 0                          # sampling seed (when temperature > 0)


def select_red_team(prompts: list[SafetyPrompt], cfg: CAIConfig,
                    ) -> tuple[list[SafetyPrompt], list[SafetyPrompt]]:
    """(used, excluded) under the regime's category filter and per-category cap."""
    if cfg.regime not in REGIMES:
        raise CAIError(f"unknown regime {cfg.regime!r}; use narrow or broad")
    wanted = cfg.categories if cfg.categories is not None else REGIMES[cfg.regime]
    have = {p.category for p in prompts}
    if wanted is not None:
        missing = sorted(set(wanted) - have)
        if missing:
            raise CAIError(f"categories {missing} have no prompts in {cfg.source}; available: "
                           + ", ".join(sorted(have)))
    rng = random.Random(cfg.seed)
    used, excluded, counts = [], [], dict[str, int]()
    order = sorted(prompts, key=lambda p: (p.category, rng.random()))
    for p in order:
        ok = wanted is None or p.category in wanted
        if ok and cfg.per_category is not None and counts.get(p.category, 0) >= cfg.per_category:
            ok = False
        if ok:
            counts[p.category] = counts.get(p.category, 0) + 1
            used.append(p)
        else:
            excluded.append(p)
    if not used:
        raise CAIError("the category filter left no red-team prompts")
    return sorted(used, key=lambda p: p.id), sorted(excluded, key=lambda p: p.id)


def _reply(item: PromptItem, got: dict[str, PromptItem]) -> str | None:
    it = got.get(item.id)
    return it.messages[-1]["content"] if it is not None else None


def critique_and_revise(subject: Subject, cfg: CAIConfig, out: str | Path,
                        progress: bool = True) -> Path:
    """Write ``out/revisions.jsonl`` (resumable) and ``out/manifest.json``; returns the
    dataset path."""
    out = Path(out)
    constitution = load_constitution(cfg.constitution)
    used, excluded = select_red_team(load_safety_prompts(cfg.source), cfg)
    write_json(out / "manifest.json", {
        "config": asdict(cfg), "constitution": asdict(constitution),
        "used": [asdict(p) for p in used], "excluded": [asdict(p) for p in excluded],
        "categories_used": sorted({p.category for p in used}),
        "model": subject.provenance(), "provenance": provenance(cfg.seed)})
    log = ItemLog(out / "revisions.jsonl")
    todo = [p for p in used if p.id not in log]
    if not todo:
        return out / "revisions.jsonl"
    rng = random.Random(cfg.seed)
    principle_of = {p.id: rng.randrange(len(constitution.principles)) for p in used}
    gen = dict(batch_size=cfg.batch_size, temperature=cfg.temperature, seed=cfg.seed,
               progress=progress)
    first = [PromptItem(p.id, [{"role": "user", "content": p.prompt}]) for p in todo]
    answers = {it.id: it for it in generate_responses(subject, first, cfg.max_new_tokens, **gen)}
    crit_items = [PromptItem(it.id, [*answers[it.id].messages, {
        "role": "user", "content": "Critique your previous answer. "
        + constitution.principles[principle_of[it.id]].critique}])
        for it in first if it.id in answers]
    critiques = {it.id: it for it in generate_responses(subject, crit_items, cfg.critique_tokens,
                                                        **gen)}
    # The revision is asked in a fresh turn that restates request, draft and critique: small
    # models asked to revise inside the long chat tend to repeat their critique instead.
    by_id = {p.id: p for p in todo}
    rev_items = [PromptItem(it.id, [{"role": "user", "content": (
        f"Request: {by_id[it.id].prompt}\n\nDraft answer: {_reply(it, answers)}\n\n"
        f"Critique of the draft: {_reply(it, critiques)}\n\n"
        f"{constitution.principles[principle_of[it.id]].revision} "
        "Reply with the revised answer to the request only.")}])
        for it in crit_items if it.id in critiques]
    revisions = {it.id: it for it in generate_responses(subject, rev_items, cfg.max_new_tokens,
                                                        **gen)}
    recs = []
    for item in rev_items:
        revision = _reply(item, revisions)
        if not revision:
            continue
        p = by_id[item.id]
        recs.append({"key": p.id, "messages": [{"role": "user", "content": p.prompt},
                                               {"role": "assistant", "content": revision}],
                     "meta": {"category": p.category, "source": p.source,
                              "constitution": constitution.name,
                              "principle": principle_of[p.id],
                              "initial": _reply(item, answers),
                              "critique": _reply(item, critiques)}})
    log.append(recs)
    return out / "revisions.jsonl"
