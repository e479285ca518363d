"""Per-item result logs of the evals (``ItemLog``, ``ValueLog``: defined in
``persona_probe.artifacts``, so layers below the evals use the same log) and their summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from persona_probe.artifacts import ItemLog, ValueLog, write_json
from persona_probe.provenance import provenance

__all__ = ["ItemLog", "ValueLog", "read_items", "write_summary"]   # the logs live in artifacts


def write_summary(out: str | Path | None, summary: dict[str, Any], seed: int | None = None,
                  name: str = "summary.json") -> None:
    """Write ``summary`` (plus provenance) atomically beside the item log."""
    if out is None:
        return
    write_json(Path(out) / name, {**summary, "provenance": provenance(seed)})


def read_items(path: str | Path) -> list[dict]:
    """All records of an item log (for re-drawing figures without re-running a model)."""
    return list(ItemLog(path).records.values())
