"""The conscience at inference: sample ``n`` answers, keep the one the conscience approves most.

Best-of-n needs no training: the policy samples, a conscience reader (``conscience_readers``)
scores each (request, answer) exchange, and the most approved answer is returned. The
conscience reviews the request and the answer only, never the policy's system prompt, so an
adversarial system prompt steers the samples but not the review.

What a result must be compared with is plain sampling from the same ``n`` samples: the
expected value of one random sample is the mean over the ``n`` (``selection_effect``), so the
comparison is paired within each request and needs no second generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from persona_probe.errors import PersonaProbeError
from persona_probe.generation import generate_responses
from persona_probe.models import Subject
from persona_probe.prompts import PromptItem


def sample_answers(policy: Subject, prompts: Sequence[PromptItem], n: int = 4,
                   max_new_tokens: int = 48, temperature: float = 1.0, seed: int = 0,
                   batch_size: int = 16) -> tuple[list[str], list[list[str]]]:
    """Each prompt's last user message and its ``n`` sampled answers (empty samples kept, so
    every prompt has exactly ``n``)."""
    if n < 2:
        raise PersonaProbeError("best-of-n needs n >= 2 samples per prompt")
    expanded = [PromptItem(f"{p.id}#{k}", p.messages) for p in prompts for k in range(n)]
    got = {it.id: it.messages[-1]["content"] for it in generate_responses(
        policy, expanded, max_new_tokens, batch_size, temperature, seed=seed, progress=False,
        keep_empty=True)}
    users = [next(m["content"] for m in reversed(p.messages) if m["role"] == "user")
             for p in prompts]
    return users, [[got.get(f"{p.id}#{k}", "") for k in range(n)] for p in prompts]


def best_of_n(policy: Subject, reader: Any, prompts: Sequence[PromptItem], n: int = 4,
              max_new_tokens: int = 48, temperature: float = 1.0, seed: int = 0,
              batch_size: int = 16) -> list[dict[str, Any]]:
    """Per prompt: its ``n`` sampled answers, the reader's approval of each, and ``chosen`` (the
    index of the most approved; ties go to the first)."""
    users, answers = sample_answers(policy, prompts, n, max_new_tokens, temperature, seed,
                                    batch_size)
    flat_q = [u for u, a in zip(users, answers) for _ in a]
    scores = np.asarray(reader.scores(flat_q, [x for a in answers for x in a]), dtype=float)
    scores = scores.reshape(len(prompts), n)
    return [{"id": p.id, "request": u, "answers": a, "scores": [float(s) for s in row],
             "chosen": chosen_index(row)}
            for p, u, a, row in zip(prompts, users, answers, scores)]


def chosen_index(scores: Sequence[float] | np.ndarray) -> int:
    """The most approved sample (the first of ties; NaN scores never win; all NaN: 0)."""
    row = np.asarray(scores, dtype=float)
    return 0 if np.isnan(row).all() else int(np.nanargmax(row))


def baseline_scores(answers: Sequence[Sequence[str]], kind: str, seed: int = 0) -> np.ndarray:
    """Selectors that know nothing of ethics, to read a reader's effect against: ``shortest``
    and ``longest`` (a reader that only prefers a length would match one of them) and
    ``random`` (plain sampling, effect 0 in expectation). (prompts, n) scores."""
    lengths = np.array([[float(len(a)) for a in row] for row in answers])
    if kind == "shortest":
        return -lengths
    if kind == "longest":
        return lengths
    if kind == "random":
        return np.random.default_rng(seed).random(lengths.shape)
    raise PersonaProbeError(f"baseline {kind!r}; use shortest, longest or random")


def selection_effect(records: Sequence[dict[str, Any]], measure: np.ndarray) -> np.ndarray:
    """Per prompt: the measure of the chosen answer minus the mean measure of its ``n``
    samples (what one plain sample gives in expectation). ``measure``: (prompts, n)."""
    m = np.asarray(measure, dtype=float)
    chosen = np.array([r["chosen"] for r in records])
    return m[np.arange(len(records)), chosen] - np.nanmean(m, axis=1)
