"""Teacher-forced log-likelihoods: how likely the subject is to say a given reply.

At 135M parameters, answer probabilities (Yes/No) sit at chance, while the likelihood of whole
replies responds to personas (DESIGN.md). This is the judge-free workhorse behind the trait
measure, the would-say mode of the ethical diagnostic and refusal detection. Interventions
active on the subject (steering, ablation) apply, since this is a plain forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from persona_probe.batching import pad_batch, plan_batches
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
def reply_loglik(subject: Subject, prompts: Sequence[list[Message]], replies: Sequence[str],
                 batch_size: int = 16, per_token: bool = True) -> np.ndarray:
    """(n_prompts, n_replies): log-likelihood of each reply as the assistant's answer to each
    prompt (mean per token when ``per_token``, so replies of different lengths compare)."""
    encs, spans = [], []
    for msgs in prompts:
        for reply in replies:
            enc = subject.encode_chat([*msgs, {"role": "assistant", "content": reply}])
            encs.append(enc.input_ids)
            spans.append((enc.response_start, enc.response_end))
    out = np.zeros(len(encs))
    pad = subject.tokenizer.pad_token_id
    dev = subject.device
    for batch in plan_batches([len(e) for e in encs], batch_size, 8192):
        ids, mask = pad_batch([encs[i] for i in batch], pad)
        first = min(spans[i][0] for i in batch) - 1
        logits = span_logits(subject, ids.to(dev), mask.to(dev), first,
                             max(spans[i][1] for i in batch) - 1)
        for row, i in enumerate(batch):
            s, e = spans[i]
            lp = logits[row, s - 1 - first:e - 1 - first].float().log_softmax(-1)
            tok = ids[row, s:e].to(dev)
            ll = lp.gather(-1, tok[:, None]).squeeze(-1)
            out[i] = (ll.mean() if per_token else ll.sum()).item()
    return out.reshape(len(prompts), len(replies))


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
