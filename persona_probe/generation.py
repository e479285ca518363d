"""Sample the subject's own responses, so activations can be read over response tokens."""

from __future__ import annotations

import warnings

import torch
from tqdm.auto import tqdm

from persona_probe.batching import pad_batch
from persona_probe.models import Subject
from persona_probe.prompts import PromptItem


@torch.no_grad()
def generate_responses(subject: Subject, items: list[PromptItem], max_new_tokens: int = 64,
                       batch_size: int = 16, temperature: float = 0.0, seed: int = 0,
                       progress: bool = True, min_new_tokens: int | None = None,
                       ) -> list[PromptItem]:
    """Append the subject's reply to every prompt-only item (greedy when temperature is 0).

    Items are batched by length with left padding; order of the returned list matches the
    input. Items whose reply decodes to nothing are dropped with a warning.
    """
    tok = subject.tokenizer
    prompts = [tok.apply_chat_template(it.messages, tokenize=False, add_generation_prompt=True)
               for it in items]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(items)), key=lambda i: -len(ids[i]))
    replies: dict[int, str] = {}
    torch.manual_seed(seed)
    bar = tqdm(total=len(items), desc="generate", disable=not progress, leave=False)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        input_ids, mask = pad_batch([ids[i] for i in batch], tok.pad_token_id, side="left")
        width = input_ids.shape[1]
        out = subject.model.generate(
            input_ids=input_ids.to(subject.device), attention_mask=mask.to(subject.device),
            max_new_tokens=max_new_tokens, do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
            pad_token_id=tok.pad_token_id, min_new_tokens=min_new_tokens)
        for row, i in enumerate(batch):
            replies[i] = tok.decode(out[row, width:], skip_special_tokens=True).strip()
        bar.update(len(batch))
    bar.close()
    result = [it.with_response(replies[i]) for i, it in enumerate(items) if replies[i]]
    if len(result) < len(items):
        warnings.warn(f"{len(items) - len(result)} items got an empty reply and were dropped",
                      stacklevel=2)
    return result
