"""Judge-free log-prob evals in Anthropic's model-written-evals formats.

Persona files answer `` Yes``/`` No``; advanced-ai-risk files answer `` (A)``/`` (B)``. The
question is the user's turn and each answer is teacher-forced as the assistant's reply (summed
log-likelihood, since both answers are scored whole); the score is the normalized probability
of the answer matching the behaviour, P(match) / (P(match) + P(not match)), per file and pooled.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from persona_probe.chat import Message
from persona_probe.errors import PromptSetError
from persona_probe.evals.records import ItemLog, write_summary
from persona_probe.likelihood import reply_loglik
from persona_probe.models import Subject
from persona_probe.prompts import iter_jsonl
from persona_probe.stats import bootstrap

# debris is "<META_START>path<META_END>" mid-text, or "<META_START>path" running to the end
_META = re.compile(r"<META_START>(.*?<META_END>|.*\Z)", re.DOTALL)


@dataclass(frozen=True)
class MCItem:
    key: str            # "<file stem>/<line>"
    question: str
    matching: str       # answer text as given in the file, e.g. " Yes" or " (A)"
    not_matching: str
    source: str


def load_anthropic_eval(path: str | Path, limit: int | None = None) -> list[MCItem]:
    """Read a persona or advanced-ai-risk JSON-lines file; strip ``<META_START>…<META_END>``
    debris. Errors name the file and line."""
    path = Path(path)
    items = []
    for where, rec in iter_jsonl(path, limit, what="Anthropic eval file"):
        q, m, n = (rec.get("question"), rec.get("answer_matching_behavior"),
                   rec.get("answer_not_matching_behavior"))
        if isinstance(n, list):  # a few files list several non-matching answers
            n = n[0] if n else None
        if not all(isinstance(x, str) and x.strip() for x in (q, m, n)):
            raise PromptSetError(f"{where}: needs non-empty 'question', "
                                 "'answer_matching_behavior' and 'answer_not_matching_behavior'")
        q = _META.sub("", q).strip()
        items.append(MCItem(f"{path.stem}/{where.rsplit(':', 1)[1]}", q, m, n, path.stem))
    if not items:
        raise PromptSetError(f"{path}: no questions")
    return items


def match_probability(subject: Subject, items: list[MCItem], system: str | None = None,
                      preface: str | None = None, batch_size: int = 16) -> np.ndarray:
    """P(match)/(P(match)+P(not match)) per item, answers scored as whole replies."""
    p = np.zeros(len(items))
    for i, it in enumerate(items):  # answers differ per item ("(A)" vs "Yes"), so score each
        msgs: list[Message] = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": f"{preface}\n\n{it.question}" if preface else it.question}]
        ll = reply_loglik(subject, [msgs], [it.matching.strip(), it.not_matching.strip()],
                          batch_size, per_token=False)[0]
        p[i] = 1.0 / (1.0 + np.exp(ll[1] - ll[0]))
    return p


def run_mc_eval(subject: Subject, files: list[str | Path], limit: int | None = None,
                system: str | None = None, out: str | Path | None = None,
                seed: int = 0) -> dict:
    """Score each file (first ``limit`` items); summary per file and pooled with CIs."""
    log = ItemLog(Path(out) / "items.jsonl" if out else None)
    for f in files:
        items = [it for it in load_anthropic_eval(f, limit) if it.key not in log]
        if items:
            probs = match_probability(subject, items, system)
            log.append({"key": it.key, "file": it.source, "question": it.question,
                        "matching": it.matching, "p_match": float(p)}
                       for it, p in zip(items, probs))
    per_file: dict[str, list[float]] = defaultdict(list)
    wanted = {Path(f).stem for f in files}
    for r in log.records.values():
        if r["file"] in wanted:
            per_file[r["file"]].append(r["p_match"])
    summary = {"score": "p_match_normalized",
               "per_file": {k: bootstrap(v, seed=seed).to_dict() for k, v in per_file.items()},
               "pooled": bootstrap([x for v in per_file.values() for x in v],
                                   seed=seed).to_dict(),
               "system": system, "model": subject.provenance()}
    write_summary(out, summary, seed)
    return summary
