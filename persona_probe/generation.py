"""Sample the subject's own responses, so activations can be read over response tokens."""

from __future__ import annotations

import warnings
from collections.abc import Collection

import torch
from tqdm.auto import tqdm

from persona_probe.batching import pad_batch
from persona_probe.errors import PersonaProbeWarning
from persona_probe.models import Subject
from persona_probe.prompts import PromptItem


@torch.no_grad()
def generate_responses(subject: Subject, items: list[PromptItem], max_new_tokens: int = 64,
                       batch_size: int = 16, temperature: float = 0.0, seed: int = 0,
                       progress: bool = True, min_new_tokens: int | None = None,
                       keep_empty: bool = False) -> list[PromptItem]:
    """Append the subject's reply to every prompt-only item (greedy when temperature is 0).

    Items are batched by length with left padding; order of the returned list matches the
    input. Items whose reply decodes to nothing are dropped with a warning, unless
    ``keep_empty`` (coherence measures count empty replies instead of losing them).
    """
    from persona_probe.chat import render_chat, template_messages

    tok = subject.tokenizer
    # the same rendering encode_chat reads the reply back with (system folded where the
    # template has no system role; thinking off)
    prompts = [render_chat(tok, template_messages(tok, it.messages), True) for it in items]
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
    if keep_empty:
        return [it.with_response(replies[i]) for i, it in enumerate(items)]
    result = [it.with_response(replies[i]) for i, it in enumerate(items) if replies[i]]
    if len(result) < len(items):
        warnings.warn(f"{len(items) - len(result)} items got an empty reply and were dropped",
                      PersonaProbeWarning, stacklevel=2)
    return result


def _top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering as transformers' TopPLogitsWarper: keep the smallest set of tokens whose
    probability reaches ``top_p`` (always at least the most likely one)."""
    sorted_scores, order = scores.sort(dim=-1, descending=False)
    drop = sorted_scores.softmax(-1).cumsum(-1) <= (1 - top_p)
    drop[..., -1:] = False
    return scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


@torch.no_grad()
def sample_continuations(model, prompt_ids: torch.Tensor, n: int, max_new_tokens: int, *,
                         temperature: float = 1.0, top_p: float | None = None,
                         generator: torch.Generator | None = None,
                         eos_token_ids: Collection[int] = (), pad_token_id: int = 0,
                         output_logits: bool = False,
                         ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``n`` continuations of one prompt, token by token with a KV cache (greedy at temperature 0).

    Unlike ``model.generate``, sampling draws from ``generator`` and never touches (or reseeds)
    the global torch RNG, so a seeded request is reproducible whatever else runs in the process.
    The prompt (``[T]`` or ``[1, T]`` token ids on the model's device) is prefilled once and its
    cache shared by the ``n`` rows. A row that emits an eos token continues with
    ``pad_token_id``; the loop stops when every row has. Returns the new tokens ``[n, steps]``
    and, with ``output_logits``, the raw (unwarped, float32) next-token logits ``[n, vocab]`` of
    each step, as ``generate(output_logits=True)`` gives them.
    """
    ids = prompt_ids.reshape(1, -1)
    out = model(input_ids=ids, use_cache=True)
    past = out.past_key_values
    logits = out.logits[:, -1, :].float()
    if n > 1:
        if hasattr(past, "batch_repeat_interleave"):
            past.batch_repeat_interleave(n)
            logits = logits.expand(n, -1)
        else:  # a cache that cannot be repeated: prefill every row
            out = model(input_ids=ids.expand(n, -1), use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1, :].float()
    eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=ids.device)
    done = torch.zeros(n, dtype=torch.bool, device=ids.device)
    tokens: list[torch.Tensor] = []
    step_logits: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        if step:
            out = model(input_ids=tokens[-1][:, None], past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1, :].float()
        if output_logits:
            step_logits.append(logits)
        if temperature > 0:
            scores = logits / temperature
            if top_p is not None and top_p < 1:
                scores = _top_p_filter(scores, top_p)
            nxt = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        nxt = nxt.masked_fill(done, pad_token_id)
        tokens.append(nxt)
        done |= torch.isin(nxt, eos)
        if bool(done.all()):
            break
    new = torch.stack(tokens, 1) if tokens else ids.new_zeros((n, 0))
    return new, step_logits
