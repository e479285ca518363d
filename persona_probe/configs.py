"""Plain-dataclass configurations read from JSON files: one reader for every config type, so
unknown keys, bad JSON and missing fields get the same clear errors everywhere."""

from __future__ import annotations

import dataclasses
import json
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
    """``cls(**raw)`` with unknown keys and missing required keys named."""
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - known)
    if unknown:
        raise error(f"{where}: unknown keys {unknown}; valid keys are {', '.join(sorted(known))}")
    missing = [k for k in required if k not in raw]
    if missing:
        raise error(f"{where}: {', '.join(missing)} required")
    try:
        return cls(**raw)
    except TypeError as exc:
        raise error(f"{where}: {exc}") from None
