"""Plain-dataclass configurations read from JSON files: one reader for every config type, so
unknown keys, bad JSON and missing fields get the same clear errors everywhere."""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from persona_probe.errors import PersonaProbeError

T = TypeVar("T")


def read_json_config(path: str | Path, what: str,
                     error: type[PersonaProbeError] = PersonaProbeError) -> dict[str, Any]:
    """The JSON object in ``path``; a top-level ``"//"`` key is a comment and is dropped."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: {what} must be a JSON object")
    raw.pop("//", None)
    return raw


def config_from_dict(cls: type[T], raw: dict[str, Any], where: str,
                     error: type[PersonaProbeError] = PersonaProbeError,
                     required: tuple[str, ...] = ()) -> T:
    """``cls(**raw)`` with unknown keys and missing required keys named. Every check of a
    config's values lives in its ``__post_init__``, so a config built directly in Python is
    validated exactly as one read from a file; an error from there is prefixed with ``where``."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - known)
    if unknown:
        raise error(f"{where}: unknown keys {unknown}; valid keys are {', '.join(sorted(known))}")
    missing = [k for k in required if k not in raw]
    if missing:
        raise error(f"{where}: {', '.join(missing)} required")
    nested = nested_fields(cls)
    raw = {k: (build_nested(nested[k], v, f"{where}: {k}", error)
               if k in nested and isinstance(v, dict) else v) for k, v in raw.items()}
    check_field_types(cls, raw, where, error)
    try:
        return cls(**raw)
    except TypeError as exc:
        raise error(f"{where}: {exc}") from None
    except PersonaProbeError as exc:     # a __post_init__ check: say which config it was
        msg = str(exc)
        raise type(exc)(msg if msg.startswith(f"{where}:") else f"{where}: {msg}") from None


@functools.lru_cache(maxsize=None)
def nested_fields(cls: type) -> dict[str, type]:
    """The fields that hold a whole config of their own (annotated as a dataclass, or as one
    or None), by name: a JSON object there is built into that class, so it is typed, documented
    and validated like the config around it. Containers of dataclasses (``list[X]``) are not
    nested configs. Annotations that do not resolve at run time are an error, not a silent
    fall-back to untyped dicts."""
    import types

    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint = hints.get(f.name)
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            options = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = options[0] if len(options) == 1 else None
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out[f.name] = hint
    return out


def _optional(cls: type, name: str) -> bool:
    hint = typing.get_type_hints(cls).get(name)
    return type(None) in typing.get_args(hint)


def build_nested(cls: type[T], raw: dict[str, Any], where: str,
                 error: type[PersonaProbeError] = PersonaProbeError) -> T:
    """A nested config from its JSON object, through the class's own ``from_dict`` where it
    has one (it may resolve more than its fields); errors name the path (``f.json: screening``)."""
    from_dict = getattr(cls, "from_dict", None)
    try:
        if from_dict is not None:
            return from_dict(raw, where)
        return config_from_dict(cls, raw, where, error)
    except PersonaProbeError as exc:
        msg = str(exc)
        raise type(exc)(msg if msg.startswith(where) else f"{where}: {msg}") from None


def coerce_nested(obj: Any, where: str = "",
                  error: type[PersonaProbeError] = PersonaProbeError) -> None:
    """In a ``__post_init__``: a nested config given as a dict (direct construction in Python)
    is built into its class, so both ways of making a config give the same typed object."""
    for name, sub in nested_fields(type(obj)).items():
        value = getattr(obj, name)
        if isinstance(value, dict):
            setattr(obj, name, build_nested(sub, value, f"{where}{name}", error))
        elif value is None and not _optional(type(obj), name):
            raise error(f"{where}{name} must be a {sub.__name__} or a JSON object of its "
                        "fields (an empty one for the defaults), not null")
        elif value is not None and not isinstance(value, sub):
            raise error(f"{where}{name} must be a {sub.__name__} or a JSON object of its "
                        f"fields, not {type(value).__name__}")


def refuse_fixed(overrides: dict[str, Any], fixed: tuple[str, ...], where: str, by: str,
                 error: type[PersonaProbeError] = PersonaProbeError) -> None:
    """Refuse override keys the parent config sets itself (they would be silently replaced).
    ``by`` names what sets them, e.g. "the config's model and seed"."""
    bad = sorted(set(overrides) & set(fixed))
    if bad:
        raise error(f"{where} may not set {bad}: they come from {by}; drop them there")


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    """Each field's validator (a pydantic TypeAdapter), or nothing for a type it cannot
    describe (left to the class's own __post_init__ checks)."""
    import pydantic

    try:
        hints = typing.get_type_hints(cls)
    except Exception:   # an annotation that does not resolve at run time
        return {}
    out = {}
    nested = nested_fields(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in nested:            # built and checked by its own class
            continue
        try:
            out[f.name] = pydantic.TypeAdapter(hints[f.name])
        except Exception:
            continue
    return out


def check_field_types(cls: type, raw: dict[str, Any], where: str,
                      error: type[PersonaProbeError] = PersonaProbeError) -> None:
    """Refuse a value of the wrong JSON type before the class sees it (``"batch_size": "16"``
    would otherwise fail deep inside with a TypeError, or worse, run). JSON semantics, strict:
    arrays fit tuples and integers fit floats, but no string becomes a number."""
    import pydantic

    adapters = _field_types(cls)
    for key, value in raw.items():
        adapter = adapters.get(key)
        if adapter is None:
            continue
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue   # not a JSON value (Python callers may pass paths, tensors...)
        try:
            adapter.validate_json(text, strict=True)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            loc = "".join(f"[{p!r}]" for p in first["loc"])
            raise error(f"{where}: {key}{loc} = {text[:80]}: {first['msg'].lower()} "
                        f"(expected {_type_name(adapter)})") from None


def _type_name(adapter: Any) -> str:
    t = getattr(adapter, "_type", "?")
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")


def builtin_names(subdir: str) -> list[str]:
    """Names of the JSON files shipped in ``persona_probe/data/SUBDIR``."""
    from importlib import resources

    root = resources.files("persona_probe") / "data" / subdir
    return sorted(p.name.removesuffix(".json") for p in root.iterdir()
                  if p.name.endswith(".json"))


def read_named_json(subdir: str, spec: str | Path, what: str,
                    error: type[PersonaProbeError] = PersonaProbeError,
                    ) -> tuple[Any, str]:
    """(parsed JSON, where) for a built-in name in ``data/SUBDIR`` or a ``.json`` path; errors
    list the built-in names and name the line of bad JSON."""
    from importlib import resources

    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        text, where = path.read_text(encoding="utf-8"), str(path)
    elif str(spec) in builtin_names(subdir):
        ref = resources.files("persona_probe") / "data" / subdir / f"{spec}.json"
        text, where = ref.read_text(encoding="utf-8"), f"builtin:{spec}"
    else:
        raise error(f"unknown {what} {str(spec)!r}; use one of "
                    f"{', '.join(builtin_names(subdir))} or a JSON file")
    try:
        return json.loads(text), where
    except json.JSONDecodeError as exc:
        raise error(f"{where}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation, read from the class source: the comment on its line, or the
    comment lines directly above it (the form configs are written in), so ``--help`` and the
    code say the same thing. A field a dataclass inherits takes the documentation its base
    class gives it. A field with neither maps to ``""``."""
    import inspect

    order = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    try:
        docs = _own_field_docs(inspect.getsource(cls), set(order))
    except (OSError, TypeError):
        docs = {}
    out = {n: docs.get(n, "") for n in order}
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            for n, doc in field_docs(base).items():
                if n in out and not out[n]:
                    out[n] = doc
    return out


def _own_field_docs(src: str, names: set[str]) -> dict[str, str]:
    """The comments ``src`` (one class's source) gives the fields it declares."""
    import io
    import tokenize

    lines = src.splitlines()
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    docs: dict[str, str] = {}
    continued: set[int] = set()      # comment lines that continue a field's trailing comment
    for i, line in enumerate(lines, start=1):
        head = line.strip().split(":", 1)[0]
        if head not in names or head in docs or line[:len(line) - len(line.lstrip())] == "":
            continue
        above, j = [], i - 1
        while j in comments and j not in continued and lines[j - 1].strip().startswith("#"):
            above.insert(0, comments[j])
            j -= 1
        own = comments.get(i, "") if not line.strip().startswith("#") else ""
        # a trailing comment may continue on the following comment-only lines
        k = i + 1
        while own and k in comments and lines[k - 1].strip().startswith("#") and \
                len(lines[k - 1]) - len(lines[k - 1].lstrip()) > len(line) - len(line.lstrip()):
            own += " " + comments[k]
            continued.add(k)
            k += 1
        docs[head] = " ".join(p for p in (" ".join(above), own) if p)
    return docs


def config_reference(cls: type) -> str:
    """``name (default): doc`` for every field, one per line: what ``--help`` prints."""
    docs = field_docs(cls)
    nested = nested_fields(cls)
    out = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in nested:            # its own fields, one level in
            doc = docs.get(f.name, "")
            out.append(f"{f.name} ({nested[f.name].__name__})" + (f": {doc}" if doc else ""))
            out += [f"  {f.name}.{line}" for line in
                    config_reference(nested[f.name]).splitlines()]
            continue
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "required"
        doc = docs.get(f.name, "")
        out.append(f"{f.name} (default {default})" + (f": {doc}" if doc else ""))
    return "\n".join(out)

