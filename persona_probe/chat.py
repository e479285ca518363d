"""Chat formatting with exact token spans per role.

Every position mode (``response``, ``prompt_last``…) rests on knowing which tokens are the
system's, the user's, the assistant's, or the template's own. Spans are found from the rendered
template's character offsets: the chat is rendered once with its contents and once with a
unique marker in place of each content, and the markers' places give each content's characters.
This is exact for any fast tokenizer and any chat template that inserts contents verbatim, also
where a template re-renders earlier turns (Qwen3 drops the thinking block of old turns), puts
the system prompt inside a user turn (Gemma 3) or closes a finished conversation with an end
token (Phi-3); a template that rewrites a content is refused.

**Templates without a system role.** Gemma and Gemma 2 templates refuse a system message, and
Mistral v0.3's drops it from any chat that ends with a reply. For these (any template that does
not render a system message once both in a prompt and in a finished exchange) every system
message is folded into the next user turn as ``"{system}\n\n{user}"``, which is what Gemma 3's
own template does with a system message. The system text keeps its own role (0) in the token
labels, so system-prompted contrasts (persona vectors, organisms, constitutions) read the same
positions as on models with a system role; what differs is that the model sees the instruction
inside the user's turn.
``template_messages`` gives the messages as the template receives them (generation uses it).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from persona_probe.errors import PersonaProbeWarning, PromptSetError

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


#: Joins a folded system message to the user turn it is folded into (as Gemma 3's template).
SYSTEM_FOLD_SEPARATOR = "\n\n"
_SYSTEM_SUPPORT: dict[tuple, bool] = {}


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[Message],
                add_generation_prompt: bool) -> str:
    """The chat template's text for ``messages`` as given (no folding; see ``template_messages``).
    Thinking is switched off where a template has the switch (Qwen3: ``enable_thinking=False``
    puts an empty thinking block in the generation prompt, the same one a finished last turn
    renders with)."""
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt,
                                         enable_thinking=False)


def supports_system_role(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template renders a system message once, both in a prompt and in a
    finished exchange (rather than refusing it, as Gemma and Gemma 2 do, or dropping it from a
    chat that ends with a reply, as Mistral v0.3's does). Cached per template."""
    from jinja2 import TemplateError

    key = (str(tokenizer.chat_template), tokenizer.bos_token, tokenizer.eos_token)
    if key not in _SYSTEM_SUPPORT:
        chat: list[Message] = [{"role": "system", "content": _marker(0)},
                               {"role": "user", "content": _marker(1)},
                               {"role": "assistant", "content": _marker(2)}]
        try:
            texts = [render_chat(tokenizer, chat[:2], True), render_chat(tokenizer, chat, False)]
            _SYSTEM_SUPPORT[key] = all(t.count(_marker(0)) == 1 for t in texts)
        except TemplateError:
            _SYSTEM_SUPPORT[key] = False
    return _SYSTEM_SUPPORT[key]


def template_messages(tokenizer: PreTrainedTokenizerBase, messages: list[Message],
                      ) -> list[Message]:
    """``messages`` as the chat template is given them: unchanged where the template has a
    system role, else each system message folded into the next user turn (module docstring)."""
    if not any(m["role"] == "system" for m in messages) or supports_system_role(tokenizer):
        return list(messages)
    out: list[Message] = []
    pending: list[str] = []
    for m in messages:
        if m["role"] == "system":
            pending.append(m["content"])
        elif pending and m["role"] == "user":
            out.append({"role": "user",
                        "content": SYSTEM_FOLD_SEPARATOR.join([*pending, m["content"]])})
            pending = []
        elif pending:
            raise PromptSetError("this chat template has no system role, so a system message "
                                 "is folded into the next user turn, but an assistant turn "
                                 "follows it; put the system message before a user turn")
        else:
            out.append(m)
    if pending:
        raise PromptSetError("this chat template has no system role, so a system message is "
                             "folded into the next user turn, and none follows it")
    return out


def _marker(i: int) -> str:
    """Stands in for message i's content (private-use characters, never in real text)."""
    return f"\ue000{i}\ue001"


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], gen: bool) -> str:
    from jinja2 import TemplateError

    try:
        return render_chat(tokenizer, template_messages(tokenizer, messages), gen)
    except TemplateError as exc:
        raise PromptSetError(f"the chat template refused this chat: {exc}") from None


def _content_spans(tokenizer: PreTrainedTokenizerBase, messages: list[Message], gen: bool,
                   ) -> tuple[str, list[tuple[int, int, int]]]:
    """The rendered text and (char start, char end, role code) of every message's content."""
    text = _render(tokenizer, messages, gen)
    marked = _render(tokenizer, [{"role": m["role"], "content": _marker(i)}
                                 for i, m in enumerate(messages)], gen)
    found = []
    for i in range(len(messages)):
        at = marked.find(_marker(i))
        if at < 0 or marked.find(_marker(i), at + 1) >= 0:
            raise PromptSetError(f"message {i} ({messages[i]['role']}) is not rendered exactly "
                                 "once by the chat template, so its role span cannot be found")
        found.append((at, i))
    found.sort()
    pieces, spans, src, out_len = [], [], 0, 0
    for at, i in found:
        pieces.append(marked[src:at])
        out_len += at - src
        content = messages[i]["content"]
        spans.append((out_len, out_len + len(content), i))
        pieces.append(content)
        out_len += len(content)
        src = at + len(_marker(i))
    pieces.append(marked[src:])
    if "".join(pieces) != text:
        raise PromptSetError("the chat template rewrites message contents (e.g. trims them) or "
                             "renders them conditionally, so role spans cannot be found exactly")
    spans.sort(key=lambda sp: sp[2])
    return text, [(a, b, ROLE_CODES[messages[i]["role"]]) for a, b, i in spans]


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[Message], max_tokens: int,
                on_overflow: str = "error") -> EncodedChat:
    """Render ``messages`` with the chat template and label every token with its role.

    A chat that ends with an assistant turn is encoded as prompt + response; otherwise the
    generation prompt is appended and the response span is empty. A token is labelled with the
    role of the content it overlaps (a byte-level token can carry the space a template puts
    before a content, as Mistral's ``[/INST] reply``), else ``template``.
    """
    validate_messages(messages)
    if getattr(tokenizer, "chat_template", None) is None:
        raise PromptSetError("the tokenizer has no chat template; use an instruction-tuned "
                             "model or set tokenizer.chat_template")
    if not getattr(tokenizer, "is_fast", False):
        raise PromptSetError("exact role spans need a fast tokenizer (offset mapping); load "
                             "the model with its tokenizer.json")
    has_response = messages[-1]["role"] == "assistant"
    text, spans = _content_spans(tokenizer, messages, gen=not has_response)
    response_char = len(text)
    if has_response:
        prompt_text = _render(tokenizer, messages[:-1], gen=True)
        if (not text.startswith(prompt_text) or spans[-1][0] < len(prompt_text)
                or any(e > spans[-1][0] for _s, e, _c in spans[:-1])):
            raise PromptSetError("the generation prompt is not a prefix of the rendered response")
        response_char = spans[-1][0]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    roles = [ROLE_CODES["template"]] * len(ids)
    offsets = enc["offset_mapping"]
    for t, (a, b) in enumerate(offsets):
        for s, e, code in spans:
            if a < e and s < max(b, a + 1):
                roles[t] = code
                break
    response_start = next((t for t, (_a, b) in enumerate(offsets) if b > response_char),
                          len(ids))
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
        warnings.warn(f"chat of {len(ids)} tokens truncated to {max_tokens}",
                      PersonaProbeWarning, stacklevel=2)
        ids, roles, truncated = ids[:max_tokens], roles[:max_tokens], True
        response_start = min(response_start, max_tokens)
        response_end = min(response_end, max_tokens)
    if response_start == 0:
        raise PromptSetError("the chat has no prompt tokens before the response")
    return EncodedChat(ids, roles, response_start, response_end, truncated)
