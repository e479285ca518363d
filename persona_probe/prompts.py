"""Prompt sets: the team's built-in sets and user files, as a list of chat items.

Built-in sets are TSV files (``subcategory<TAB>prompt``) in ``persona_probe/data/prompts``.
User files are JSON lines, each either ``{"messages": [...]}`` or ``{"prompt": ..., "response":
...}`` (response optional), with optional ``id``, ``category`` and ``subcategory``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from persona_probe.chat import Message, validate_messages
from persona_probe.errors import PromptSetError


@dataclass(frozen=True)
class PromptItem:
    id: str
    messages: list[Message]
    category: str = ""
    subcategory: str = ""
    meta: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def has_response(self) -> bool:
        return self.messages[-1]["role"] == "assistant"

    def with_response(self, text: str) -> PromptItem:
        msgs = [*self.messages, {"role": "assistant", "content": text}]
        return PromptItem(self.id, msgs, self.category, self.subcategory, self.meta)

    def with_system(self, system: str | None) -> PromptItem:
        """The same chat under another system prompt (replaces any existing one)."""
        msgs = [m for m in self.messages if m["role"] != "system"]
        if system:
            msgs = [{"role": "system", "content": system}, *msgs]
        return PromptItem(self.id, msgs, self.category, self.subcategory, self.meta)


def builtin_set_names() -> list[str]:
    root = resources.files("persona_probe") / "data" / "prompts"
    return sorted(p.name.removesuffix(".tsv") for p in root.iterdir() if p.name.endswith(".tsv"))


def load_builtin(name: str) -> list[PromptItem]:
    """One built-in set by name, or ``all`` for every set in a fixed order."""
    names = builtin_set_names()
    if name == "all":
        return [item for n in names for item in load_builtin(n)]
    if name not in names:
        raise PromptSetError(f"unknown built-in prompt set {name!r}; choose from "
                             f"{', '.join(names)} or all")
    text = (resources.files("persona_probe") / "data" / "prompts" / f"{name}.tsv").read_text(
        encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    items, counters = [], dict[str, int]()
    for row in rows:
        sub = row["subcategory"]
        counters[sub] = counters.get(sub, 0) + 1
        items.append(PromptItem(f"{name}/{sub}/{counters[sub]:03d}",
                                [{"role": "user", "content": row["prompt"]}], name, sub))
    return items


def iter_jsonl(path: str | Path, limit: int | None = None, what: str = "prompt file",
               ) -> Iterator[tuple[str, dict]]:
    """(``file:line``, object) for each non-empty line; stops after ``limit`` objects, so a
    small sample of a large file costs only what it uses. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise PromptSetError(f"{what} {path} does not exist")
    n = 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if limit is not None and n >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptSetError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise PromptSetError(f"{where}: each line must be a JSON object")
            n += 1
            yield where, rec


def load_jsonl(path: str | Path, limit: int | None = None) -> list[PromptItem]:
    """A user prompt file in JSON lines; every error names the file and line."""
    path = Path(path)
    items = []
    for where, rec in iter_jsonl(path, limit):
        if "messages" in rec:
            msgs = rec["messages"]
        elif "prompt" in rec:
            msgs = [{"role": "user", "content": rec["prompt"]}]
            if rec.get("response"):
                msgs.append({"role": "assistant", "content": rec["response"]})
        else:
            raise PromptSetError(f"{where}: needs 'messages' or 'prompt'")
        if not isinstance(msgs, list):
            raise PromptSetError(f"{where}: 'messages' must be a list")
        validate_messages(msgs, where)
        lineno = where.rsplit(":", 1)[1]
        items.append(PromptItem(str(rec.get("id", f"{path.stem}/{lineno}")), msgs,
                                str(rec.get("category", "")), str(rec.get("subcategory", ""))))
    return items


def load_prompts(source: str, limit: int | None = None) -> list[PromptItem]:
    """``builtin:NAME[,NAME…]`` (or ``builtin:all``) or a path to a JSON-lines file."""
    if limit is not None and limit < 0:
        raise PromptSetError(f"limit must be 0 or more, not {limit}")
    if source.startswith("builtin:"):
        items = [it for name in source.removeprefix("builtin:").split(",")
                 for it in load_builtin(name.strip())]
        items = items[:limit] if limit is not None else items
    else:
        items = load_jsonl(source, limit)
    check_items(items, source)
    return items


def check_items(items: list[PromptItem], source: str = "prompt set") -> None:
    if not items:
        raise PromptSetError(f"{source}: the prompt set is empty; give at least one item")
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise PromptSetError(f"{source}: duplicate item id {item.id!r}; ids must be unique")
        seen.add(item.id)
