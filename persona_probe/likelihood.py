"""Teacher-forced log-likelihoods: how likely the subject is to say a given reply.

At 135M parameters, answer probabilities (Yes/No) sit at chance, while the likelihood of whole
replies responds to personas (docs/DESIGN.md). This is the judge-free workhorse behind the trait
measure, the would-say mode of the ethical diagnostic and refusal detection. Interventions
active on the subject (steering, ablation) apply, since this is a plain forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from persona_probe.batching import plan_batches
from persona_probe.chat import Message
from persona_probe.models import Subject
from persona_probe.stats import Estimate, bootstrap
from persona_probe.traits import Trait


def span_logits(subject: Subject, ids: torch.Tensor, mask: torch.Tensor, start: int,
                end: int) -> torch.Tensor:
    """Logits at positions [start, end) only. The LM head over every position of a batch is
    most of the cost for a small model with a 49k vocabulary, so models that accept
    ``logits_to_keep`` (most HF causal LMs) project only the positions that are scored."""
    keep = torch.arange(start, end, device=ids.device)
    try:
        return subject.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    except TypeError:  # an architecture without logits_to_keep
        return subject.model(input_ids=ids, attention_mask=mask).logits[:, start:end]


@torch.no_grad()
def paired_loglik(subject: Subject, chats: Sequence[tuple[list[Message], str]],
                  batch_size: int = 16, per_token: bool = True, pack: bool = True,
                  ) -> np.ndarray:
    """Log-likelihood of each (prompt, reply) pair's reply as the assistant's answer (mean per
    token when ``per_token``).

    Replies to the same prompt are packed into one sequence, ``prompt + reply₁ + reply₂ + …``,
    with a 4-D attention mask (each reply sees the prompt and its own earlier tokens) and
    position ids that restart after the prompt: the prompt is computed once instead of once per
    reply, which made the trait measure (12 short replies per question) ~3× cheaper. The result
    equals scoring every chat on its own (tested to 1e-4); ``pack=False`` does exactly that."""
    encs = [subject.encode_chat([*msgs, {"role": "assistant", "content": reply}])
            for msgs, reply in chats]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, enc in enumerate(encs):
        key = tuple(enc.input_ids[:enc.response_start]) if pack else (i,)
        groups.setdefault(key, []).append(i)
    # a packed row: the prompt, then each reply's tokens except its last (inputs only)
    rows = []
    for key, members in groups.items():
        prefix = list(encs[members[0]].input_ids[:encs[members[0]].response_start])
        segs = [encs[i].input_ids[encs[i].response_start:encs[i].response_end] for i in members]
        rows.append((prefix, members, segs))
    out = np.zeros(len(encs))
    lengths = [len(p) + sum(len(t) - 1 for t in segs) for p, _, segs in rows]
    vocab = subject.model.get_output_embeddings().weight.shape[0]
    max_tokens = max(512, min(8192, (1 << 26) // vocab * 4))   # bounds the kept logits
    for batch in plan_batches(lengths, batch_size, max_tokens):
        _score_packed(subject, [rows[b] for b in batch], out, per_token)
    return out


def _score_packed(subject: Subject, rows: list[tuple[list[int], list[int], list[list[int]]]],
                  out: np.ndarray, per_token: bool) -> None:
    dev, pad = subject.device, subject.tokenizer.pad_token_id
    width = max(len(p) + sum(len(t) - 1 for t in segs) for p, _, segs in rows)
    n = len(rows)
    ids = torch.full((n, width), pad, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    allowed = torch.zeros((n, width, width), dtype=torch.bool)
    targets = []        # (row, positions of the predicting tokens, target ids, output index)
    for r, (prefix, members, segs) in enumerate(rows):
        P = len(prefix)
        ids[r, :P] = torch.tensor(prefix)
        pos[r, :P] = torch.arange(P)
        allowed[r, :P, :P] = torch.tril(torch.ones(P, P, dtype=torch.bool))
        at = P
        for i, toks in zip(members, segs):
            k = len(toks) - 1
            if k:
                ids[r, at:at + k] = torch.tensor(toks[:-1])
                pos[r, at:at + k] = torch.arange(P, P + k)
                allowed[r, at:at + k, :P] = True
                allowed[r, at:at + k, at:at + k] = torch.tril(torch.ones(k, k, dtype=torch.bool))
            targets.append((r, [P - 1, *range(at, at + k)], toks, i))
            at += k
        allowed[r, at:, 0] = True          # padding rows attend somewhere (never read)
    keep = sorted({p for _, ps, _, _ in targets for p in ps})
    col = {p: c for c, p in enumerate(keep)}
    mask = torch.zeros((n, 1, width, width), dtype=subject.dtype)
    mask.masked_fill_(~allowed[:, None], torch.finfo(subject.dtype).min)
    keep_t = torch.tensor(keep, device=dev)
    kw = dict(input_ids=ids.to(dev), position_ids=pos.to(dev), attention_mask=mask.to(dev))
    try:
        logits = subject.model(**kw, logits_to_keep=keep_t).logits
    except TypeError:  # an architecture without logits_to_keep
        logits = subject.model(**kw).logits[:, keep_t]
    for r, ps, toks, i in targets:
        lp = logits[r, [col[p] for p in ps]].float().log_softmax(-1)
        ll = lp.gather(-1, torch.tensor(toks, device=dev)[:, None]).squeeze(-1)
        out[i] = (ll.mean() if per_token else ll.sum()).item()


def reply_loglik(subject: Subject, prompts: Sequence[list[Message]], replies: Sequence[str],
                 batch_size: int = 16, per_token: bool = True) -> np.ndarray:
    """(n_prompts, n_replies): log-likelihood of each reply as the assistant's answer to each
    prompt (mean per token when ``per_token``, so replies of different lengths compare)."""
    pairs = [(msgs, reply) for msgs in prompts for reply in replies]
    return paired_loglik(subject, pairs, batch_size, per_token).reshape(len(prompts),
                                                                         len(replies))


def trait_scores(subject: Subject, trait: Trait, questions: Sequence[str],
                 system: str | None = None, batch_size: int = 16) -> np.ndarray:
    """Per question: mean log-likelihood of the trait replies minus that of the anti replies
    (the *would-say* trait measure). ``system`` puts the chat under a system prompt."""
    prompts = [([{"role": "system", "content": system}] if system else [])
               + [{"role": "user", "content": q}] for q in questions]
    ll = reply_loglik(subject, prompts, [*trait.trait_replies, *trait.anti_replies], batch_size)
    n = len(trait.trait_replies)
    return ll[:, :n].mean(1) - ll[:, n:].mean(1)


def trait_measure(subject: Subject, trait: Trait, questions: Sequence[str],
                  system: str | None = None, seed: int = 0) -> Estimate:
    """The would-say trait measure with a bootstrap CI over questions."""
    return bootstrap(trait_scores(subject, trait, questions, system), seed=seed)
