"""Chat formatting with exact token spans per role.

Every position mode (``response``, ``prompt_last``…) rests on knowing which tokens are the
system's, the user's, the assistant's, or the template's own. Spans are found from the rendered
template's character offsets, so they are exact for any fast tokenizer and any chat template
whose renderings of successive turns are prefixes of each other.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from persona_probe.errors import PromptSetError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class Message(TypedDict):
    role: str
    content: str


ROLE_CODES: dict[str, int] = {"system": 0, "user": 1, "assistant": 2, "template": 3}
ROLE_NAMES: dict[int, str] = {v: k for k, v in ROLE_CODES.items()}


@dataclass(frozen=True)
class EncodedChat:
    """Token ids of one chat and the role of each token.

    ``response_start`` is the index of the first token of the final assistant turn's content
    (``len(input_ids)`` when the chat ends with a generation prompt instead of a response);
    ``prompt_last = response_start - 1`` is the last token the model sees before answering.
    """

    input_ids: list[int]
    roles: list[int]
    response_start: int
    response_end: int
    truncated: bool = False

    @property
    def prompt_last(self) -> int:
        return self.response_start - 1

    @property
    def has_response(self) -> bool:
        return self.response_end > self.response_start

    def __len__(self) -> int:
        return len(self.input_ids)


def validate_messages(messages: list[Message], where: str = "chat") -> None:
    if not messages:
        raise PromptSetError(f"{where}: a chat needs at least one message")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise PromptSetError(f"{where}: message {i} must be an object with 'role' and "
                                 "'content'")
        if msg["role"] not in ("system", "user", "assistant"):
            raise PromptSetError(f"{where}: message {i} has role {msg['role']!r}; use system, "
                                 "user or assistant")
        if not isinstance(msg["content"], str) or not msg["content"].strip():
            raise PromptSetError(f"{where}: message {i} ({msg['role']}) has empty content")


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], gen: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[Message], max_tokens: int,
                on_overflow: str = "error") -> EncodedChat:
    """Render ``messages`` with the chat template and label every token with its role.

    A chat that ends with an assistant turn is encoded as prompt + response; otherwise the
    generation prompt is appended and the response span is empty.
    """
    validate_messages(messages)
    if getattr(tokenizer, "chat_template", None) is None:
        raise PromptSetError("the tokenizer has no chat template; use an instruction-tuned "
                             "model or set tokenizer.chat_template")
    if not getattr(tokenizer, "is_fast", False):
        raise PromptSetError("exact role spans need a fast tokenizer (offset mapping); load "
                             "the model with its tokenizer.json")
    has_response = messages[-1]["role"] == "assistant"
    text = _render(tokenizer, messages, gen=not has_response)
    spans: list[tuple[int, int, int]] = []  # (char start, char end, role code)
    prev = ""
    for i, msg in enumerate(messages):
        rendered = _render(tokenizer, messages[: i + 1], gen=False)
        if not text.startswith(rendered[: len(prev)]) or not rendered.startswith(prev):
            raise PromptSetError("the chat template does not render turns as prefixes of each "
                                 "other, so role spans cannot be found exactly")
        start = rendered.rfind(msg["content"])
        if start < len(prev):
            raise PromptSetError(f"message {i} content was not found verbatim in the rendered "
                                 "template (the template rewrites it)")
        spans.append((start, start + len(msg["content"]), ROLE_CODES[msg["role"]]))
        prev = rendered
    response_char = len(text)
    if has_response:
        prompt_text = _render(tokenizer, messages[:-1], gen=True)
        if not text.startswith(prompt_text) or spans[-1][0] < len(prompt_text):
            raise PromptSetError("the generation prompt is not a prefix of the rendered response")
        response_char = spans[-1][0]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    roles = [ROLE_CODES["template"]] * len(ids)
    for t, (a, _b) in enumerate(enc["offset_mapping"]):
        for s, e, code in spans:
            if s <= a < e:
                roles[t] = code
                break
    offsets = enc["offset_mapping"]
    response_start = next((t for t, (a, _b) in enumerate(offsets) if a >= response_char), len(ids))
    response_end = response_start
    if has_response:
        last_end = spans[-1][1]
        response_end = max((t + 1 for t, (a, _b) in enumerate(offsets) if a < last_end),
                           default=response_start)
    truncated = False
    if len(ids) > max_tokens:
        if on_overflow != "truncate":
            raise PromptSetError(
                f"chat is {len(ids)} tokens, longer than the limit of {max_tokens}; shorten it, "
                "raise max_tokens, or pass on_overflow='truncate' (--on-overflow truncate)")
        warnings.warn(f"chat of {len(ids)} tokens truncated to {max_tokens}", stacklevel=2)
        ids, roles, truncated = ids[:max_tokens], roles[:max_tokens], True
        response_start = min(response_start, max_tokens)
        response_end = min(response_end, max_tokens)
    if response_start == 0:
        raise PromptSetError("the chat has no prompt tokens before the response")
    return EncodedChat(ids, roles, response_start, response_end, truncated)
