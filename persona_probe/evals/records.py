"""Per-item result logs that survive a crash: append-only JSON lines keyed by item.

An eval appends each finished item and flushes it, so a killed run keeps everything it had
judged; on resume the keys already present are skipped. A torn last line (the process died
mid-write) is dropped on open, never parsed as a result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from persona_probe.artifacts import write_json
from persona_probe.errors import PersonaProbeError
from persona_probe.provenance import provenance


class ItemLog:
    """``path`` holds one JSON object per line, each with a unique ``key``."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.records: dict[str, dict] = {}
        if self.path is None or not self.path.is_file():
            return
        raw = self.path.read_bytes()
        good = raw if raw.endswith(b"\n") or not raw else raw[: raw.rfind(b"\n") + 1]
        if len(good) < len(raw):  # torn tail from an interrupted write
            with open(self.path, "r+b") as fh:
                fh.truncate(len(good))
        for lineno, line in enumerate(good.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PersonaProbeError(f"{self.path}:{lineno}: not valid JSON ({exc.msg}); "
                                        "delete the file to start the eval afresh") from None
            self.records[rec["key"]] = rec

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def append(self, recs: Iterable[dict]) -> None:
        recs = list(recs)
        for rec in recs:
            self.records[rec["key"]] = rec
        if self.path is None or not recs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
            fh.flush()
            os.fsync(fh.fileno())


def write_summary(out: str | Path | None, summary: dict[str, Any], seed: int | None = None,
                  name: str = "summary.json") -> None:
    """Write ``summary`` (plus provenance) atomically beside the item log."""
    if out is None:
        return
    write_json(Path(out) / name, {**summary, "provenance": provenance(seed)})


def read_items(path: str | Path) -> list[dict]:
    """All records of an item log (for re-drawing figures without re-running a model)."""
    return list(ItemLog(path).records.values())
