"""Chat corpora for SAE training: a recipe of sources mixed into one JSON-lines prompt file.

An SAE is only as good as the text it saw. A recipe names its sources (the team's built-in
prompt sets, HH-RLHF transcripts, chat-format JSONL such as the emergent-misalignment sets,
Anthropic persona statements) with a limit each, so a shipped SAE's data is one small JSON file
that anyone with ``../shared/data`` can rebuild. Prompt-only items get the model's own replies
at capture time (``--generate``). The corpus file holds the data; it is written under ``runs/``
and never committed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from persona_probe.artifacts import atomic_write, read_json
from persona_probe.datasets import load_chat_jsonl, load_hh_rlhf, shared_data_dir
from persona_probe.errors import PromptSetError
from persona_probe.prompts import PromptItem, check_items, iter_jsonl, load_prompts

#: The built-in kinds; ``register_source_kind`` adds others (``KINDS`` lists them all).
SourceKind = Literal["builtin", "hh_rlhf", "chat_jsonl", "persona_statements", "questions"]
KINDS: tuple[str, ...] = ()

#: How a persona statement becomes a user turn; the model answers it at capture time.
STATEMENT_PROMPT = 'What do you think of this statement? "{statement}"'


@dataclass(frozen=True)
class CorpusSource:
    """One source of chats. ``path`` may start with ``shared:`` (relative to the shared data
    directory) or be any path; for ``builtin`` it is the set list, e.g. ``all``."""

    kind: SourceKind | str      # builtin | hh_rlhf | chat_jsonl | persona_statements |
                                # questions, or a kind added with register_source_kind
    path: str                   # the source file (a path or shared:REL); builtin: a set list
    limit: int | None = None    # most items read from this source (None: all)
    # system prompts put before every chat of the source, one copy of the source per prompt
    # (``system_prompts``: e.g. "trait:evil,anti:evil,constitution:all"); prompt-only chats are
    # then answered under that prompt at capture time, so a dictionary sees persona-laden replies
    system: str | None = None


@dataclass(frozen=True)
class CorpusRecipe:
    name: str                   # the corpus's name (from a file: "name", else the file's stem)
    # the sources, each {kind, path, limit}; their items are concatenated in this order
    sources: tuple[CorpusSource, ...] = field(default_factory=tuple)

    @classmethod
    def from_file(cls, path: str | Path) -> CorpusRecipe:
        path = Path(path)
        if not path.is_file():
            raise PromptSetError(f"corpus recipe {path} does not exist")
        try:
            raw = read_json(path)
        except json.JSONDecodeError as exc:
            raise PromptSetError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(raw, dict) or "sources" not in raw:
            raise PromptSetError(f"{path}: a corpus recipe is an object with 'name' and "
                                 "'sources' (a list of {kind, path, limit})")
        sources = []
        for i, src in enumerate(raw["sources"]):
            if not isinstance(src, dict) or not isinstance(src.get("kind"), str) \
                    or src["kind"] not in SOURCE_KINDS or "path" not in src:
                raise PromptSetError(f"{path}: source {i} needs kind (one of {', '.join(KINDS)}) "
                                     f"and path; got {src!r}")
            unknown = set(src) - {"kind", "path", "limit", "system"}
            if unknown:
                raise PromptSetError(f"{path}: source {i} has unknown keys {sorted(unknown)}")
            if src.get("system") is not None:
                system_prompts(str(src["system"]))       # a bad spec fails at the recipe
            sources.append(CorpusSource(src["kind"], str(src["path"]), src.get("limit"),
                                        src.get("system")))
        return cls(str(raw.get("name", path.stem)), tuple(sources))


def resolve_shared(path: str) -> Path:
    """``shared:REL`` → the shared data directory's file; other paths unchanged."""
    if not path.startswith("shared:"):
        return Path(path)
    root = shared_data_dir()
    if root is None:
        raise PromptSetError(f"{path} needs the shared data directory (../shared/data beside the "
                             "checkout, or set PERSONA_PROBE_DATA)")
    return root / path.removeprefix("shared:")


def load_persona_statements(path: str | Path, limit: int | None = None) -> list[PromptItem]:
    """Anthropic persona statements as prompt-only chats asking the model's view."""
    path = Path(path)
    items = []
    for where, rec in iter_jsonl(path, limit, what="persona file"):
        statement = rec.get("statement")
        if not isinstance(statement, str):
            raise PromptSetError(f"{where}: expected a JSON object with a 'statement'")
        lineno = where.rsplit(":", 1)[1]
        msgs = [{"role": "user", "content": STATEMENT_PROMPT.format(statement=statement)}]
        items.append(PromptItem(f"{path.stem}/{lineno}", msgs, "persona", path.stem))
    return items


# ----------------------------------------------------------------------------- source kinds

#: ``loader(path, limit) -> list[PromptItem]``; ``path`` is a resolved file for file kinds, the
#: recipe's string as written otherwise.
SourceLoader = Callable[..., list[PromptItem]]


@dataclass(frozen=True)
class SourceKindSpec:
    """A registered kind: its loader and whether ``path`` names a file (``shared:`` resolved,
    its existence checked before the loader runs)."""

    kind: str
    loader: SourceLoader
    file: bool = True


SOURCE_KINDS: dict[str, SourceKindSpec] = {}


def register_source_kind(kind: str, loader: SourceLoader | None = None, *, file: bool = True,
                         replace: bool = False):
    """Add a corpus source kind that recipes can name (``{"kind": KIND, "path": …}``).

    ``loader(path, limit)`` returns at most ``limit`` PromptItems with unique ids (a reader of
    the shared data calls ``datasets.verify_provenance`` first). With ``file=True`` the loader
    gets the resolved ``Path`` (``shared:REL`` under the shared data directory), already checked
    to exist; with ``file=False`` it gets the recipe's string (``builtin`` reads set names). A
    kind that exists is refused unless ``replace=True``. Call it directly or as a decorator
    (``@register_source_kind("KIND")``)."""
    if not isinstance(kind, str) or not kind.strip() or kind != kind.strip():
        raise PromptSetError(f"a source kind is a non-empty name, got {kind!r}")

    def add(fn: SourceLoader) -> SourceLoader:
        global KINDS
        if not callable(fn):
            raise PromptSetError(f"source kind {kind!r}: the loader must be callable "
                                 "(path, limit) -> list[PromptItem]")
        if kind in SOURCE_KINDS and not replace:
            raise PromptSetError(f"corpus source kind {kind!r} is already registered; pass "
                                 "replace=True to change it")
        SOURCE_KINDS[kind] = SourceKindSpec(kind, fn, file)
        KINDS = tuple(SOURCE_KINDS)
        return fn

    return add if loader is None else add(loader)


def _builtin(spec: str, limit: int | None) -> list[PromptItem]:
    return load_prompts(f"builtin:{spec}", limit)


def _chat_jsonl(path: Path, limit: int | None) -> list[PromptItem]:
    items = load_chat_jsonl(path, limit)
    return [PromptItem(f"{path.stem}/{i}", it.messages, path.stem, it.subcategory)
            for i, it in enumerate(items, 1)]


def system_prompts(spec: str) -> list[tuple[str, str]]:
    """(name, text) of every system prompt a spec names: a comma list of ``trait:NAME`` (the
    trait's own prompts), ``anti:NAME`` (its opposite's), ``constitution:NAME`` (the
    constitution as a system prompt), each NAME a built-in or ``all``."""
    from persona_probe.traits import (builtin_constitutions, builtin_traits,
                                      constitution_system, load_trait)

    out: list[tuple[str, str]] = []
    for part in (p.strip() for p in spec.split(",")):
        kind, _, name = part.partition(":")
        if kind not in ("trait", "anti", "constitution") or not name:
            raise PromptSetError(f"system prompt spec {part!r}: use trait:NAME, anti:NAME or "
                                 "constitution:NAME (NAME a built-in or all), comma-separated")
        if kind == "constitution":
            for c in builtin_constitutions() if name == "all" else [name]:
                out.append((f"constitution:{c}", constitution_system(c, PromptSetError)))
            continue
        for t in builtin_traits() if name == "all" else [name]:
            trait = load_trait(t)
            texts = trait.trait_system if kind == "trait" else trait.anti_system
            out += [(f"{kind}:{t}#{j}", text) for j, text in enumerate(texts)]
    if len({text for _, text in out}) < len(out):
        raise PromptSetError(f"system prompt spec {spec!r} names a prompt twice")
    return out


def _questions(spec: str, limit: int | None) -> list[PromptItem]:
    """The team's questions as prompt-only chats: a comma list of ``domain:NAME`` (a built-in
    domain's questions, or ``domain:all``) and ``split:extract`` / ``split:heldout`` (the
    general questions). ``split:evaluation`` is refused: line 1 reports its final numbers on
    those questions, so no dictionary may be trained on them."""
    from persona_probe.traits import builtin_domains, load_domain, trait_questions

    qs: list[tuple[str, str]] = []
    for part in (p.strip() for p in spec.split(",")):
        kind, _, name = part.partition(":")
        if kind == "domain" and name:
            for d in builtin_domains() if name == "all" else [name]:
                dom = load_domain(d, PromptSetError)
                qs += [(f"{dom.name}/{i:03d}", q) for i, q in enumerate(dom.questions)]
        elif kind == "split" and name in ("extract", "heldout"):
            qs += [(f"{name}/{i:03d}", q) for i, q in enumerate(trait_questions(name))]
        elif kind == "split" and name == "evaluation":
            raise PromptSetError("questions split:evaluation is line 1's evaluation material; "
                                 "a training corpus must not contain it (use extract, heldout "
                                 "or domain:NAME)")
        else:
            raise PromptSetError(f"questions spec {part!r}: use domain:NAME (or domain:all), "
                                 "split:extract or split:heldout, comma-separated")
    return [PromptItem(f"questions/{qid}", [{"role": "user", "content": q}], "question")
            for qid, q in qs[:limit]]


register_source_kind("builtin", _builtin, file=False)
register_source_kind("hh_rlhf", load_hh_rlhf)
register_source_kind("chat_jsonl", _chat_jsonl)
register_source_kind("persona_statements", load_persona_statements)
register_source_kind("questions", _questions, file=False)


def load_source(src: CorpusSource) -> list[PromptItem]:
    """The items of one source, read by its kind's registered loader (one copy per system
    prompt when the source names ``system``)."""
    spec = SOURCE_KINDS.get(src.kind)
    if spec is None:
        raise PromptSetError(f"unknown corpus source kind {src.kind!r}; use one of "
                             f"{', '.join(SOURCE_KINDS)} (or register_source_kind)")
    if not spec.file:
        items = spec.loader(src.path, src.limit)
    else:
        path = resolve_shared(src.path)
        if not path.is_file():
            raise PromptSetError(f"corpus source {src.path} not found at {path}")
        items = spec.loader(path, src.limit)
    return items if src.system is None else with_system_prompts(items, src.system)


def with_system_prompts(items: list[PromptItem], spec: str) -> list[PromptItem]:
    """Every item once under each system prompt of ``spec`` (ids ``ID@PROMPT``). A chat that
    already has a system turn is refused: it would carry two personas."""
    systems = system_prompts(spec)
    with_system = [it.id for it in items if any(m["role"] == "system" for m in it.messages)]
    if with_system:
        raise PromptSetError(f"{len(with_system)} chats already have a system turn (e.g. "
                             f"{with_system[0]}); drop 'system' from this source")
    return [PromptItem(f"{it.id}@{name}", [{"role": "system", "content": text}, *it.messages],
                       it.category, name) for name, text in systems for it in items]


def build_corpus(recipe: CorpusRecipe) -> list[PromptItem]:
    items = [it for src in recipe.sources for it in load_source(src)]
    check_items(items, f"corpus {recipe.name}")
    return items


def write_corpus(items: list[PromptItem], out: str | Path, recipe: CorpusRecipe | None = None,
                 ) -> Path:
    """Write items as JSON lines (readable by ``load_prompts``) and the recipe beside them."""
    out = Path(out)
    lines = "".join(json.dumps({"id": it.id, "messages": it.messages, "category": it.category,
                                "subcategory": it.subcategory}, ensure_ascii=False) + "\n"
                    for it in items)
    atomic_write(out, lambda tmp: tmp.write_text(lines, encoding="utf-8"))
    if recipe is not None:
        text = json.dumps(asdict(recipe), indent=2) + "\n"
        atomic_write(out.with_suffix(".recipe.json"),
                     lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return out
