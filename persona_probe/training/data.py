"""Chat datasets for finetuning, tokenized with an assistant-only loss mask.

Only the assistant's tokens (each assistant turn's content and the end-of-turn token that
closes it) carry loss: a persona is learned from what the model says, never from the user's
or system's words. Spans come from ``chat.encode_chat`` (exact per-token roles), so the mask is
right for any chat template. Bad samples are refused with the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from persona_probe.chat import ROLE_CODES, validate_messages
from persona_probe.errors import PromptSetError
from persona_probe.models import Subject
from persona_probe.prompts import iter_jsonl

IGNORE = -100
_ASSISTANT, _TEMPLATE = ROLE_CODES["assistant"], ROLE_CODES["template"]


@dataclass(frozen=True)
class Chat:
    """One training chat and where it came from (``file:line``)."""

    messages: list[dict]
    where: str


def resolve_data_path(spec: str | Path) -> Path:
    """A path, or ``shared:REL`` inside ../shared/data (never copied into the project)."""
    spec = str(spec)
    if spec.startswith("shared:"):
        from persona_probe.datasets import shared_data_dir

        root = shared_data_dir()
        if root is None:
            raise PromptSetError(f"{spec} needs ../shared/data (or $PERSONA_PROBE_DATA)")
        return root / spec.removeprefix("shared:")
    return Path(spec)


def load_chats(source: str | Path, limit: int | None = None, offset: int = 0) -> list[Chat]:
    """``{"messages": [...]}`` lines; each needs at least one non-empty assistant turn."""
    path = resolve_data_path(source)
    out = []
    for i, (where, rec) in enumerate(iter_jsonl(path, None if limit is None else offset + limit,
                                                what="training data file")):
        if i < offset:
            continue
        msgs = rec.get("messages")
        if not isinstance(msgs, list):
            raise PromptSetError(f"{where}: expected {{\"messages\": [...]}}")
        validate_messages(msgs, where)
        if not any(m["role"] == "assistant" for m in msgs):
            raise PromptSetError(f"{where}: no assistant turn, so nothing to learn from")
        out.append(Chat(msgs, where))
    if not out:
        raise PromptSetError(f"{path}: no training chats")
    return out


def tokenize_chat(subject: Subject, chat: Chat, max_tokens: int,
                  on_overflow: str = "error") -> dict[str, list[int]]:
    """input_ids, attention_mask and labels (IGNORE outside assistant tokens)."""
    try:
        enc = subject.encode_chat(chat.messages, max_tokens, on_overflow)
    except PromptSetError as exc:
        raise PromptSetError(f"{chat.where}: {exc}") from None
    labels = [IGNORE] * len(enc.input_ids)
    for t, role in enumerate(enc.roles):
        if role == _ASSISTANT:
            labels[t] = enc.input_ids[t]
        elif role == _TEMPLATE and t > 0 and enc.roles[t - 1] == _ASSISTANT:
            labels[t] = enc.input_ids[t]          # the end-of-turn token closing the reply
    if all(x == IGNORE for x in labels):
        raise PromptSetError(f"{chat.where}: no assistant tokens left (truncated away?)")
    return {"input_ids": list(enc.input_ids), "attention_mask": [1] * len(enc.input_ids),
            "labels": labels}
