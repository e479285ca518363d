"""Crash-safe file writing and checksums shared by every artifact writer.

A file is written under a temporary name in the same directory and renamed into place, so a
reader never sees half a file: after a crash the old file, or no file, is what remains.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from persona_probe.errors import PersonaProbeError


class ArtifactWriteError(PersonaProbeError):
    """An artifact could not be written (e.g. no space left); nothing was half-written."""


_UMASK = os.umask(0)
os.umask(_UMASK)


def is_io_error(exc: BaseException) -> bool:
    """OSError, or safetensors' own error type wrapping one ('I/O error: File too large')."""
    return isinstance(exc, OSError) or (type(exc).__name__ == "SafetensorError"
                                        and "I/O error" in str(exc))


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and rename the result to ``path``; on failure nothing is left."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts are shared files
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if not is_io_error(exc):
            raise
        raise ArtifactWriteError(   # disk full, file-size limit, permissions: old file stands
            f"could not write {path} ({getattr(exc, 'strerror', None) or exc}); the previous "
            "version of that file, if any, is intact. Free disk space (or fix permissions) "
            "and re-run; resumable jobs continue from their last committed state") from exc
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically, human-readable and key-sorted so diffs stay small."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """Write one JSON value per line, atomically (a killed writer leaves the old file)."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --- append-only JSON-lines logs keyed by item ---------------------------------------------
# An eval or experiment appends each finished item and flushes it, so a killed run keeps
# everything it had measured; on resume the keys already present are skipped. A torn last line
# (the process died mid-write) is dropped on open, never parsed as a result.

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


class ValueLog(ItemLog):
    """Per-item values of named conditions (``{"key": condition, "values": [...]}`` lines): an
    experiment measures a condition once, and a killed run resumes at the first condition it
    had not finished."""

    def measure(self, key: str, compute: Callable[[], Iterable[float]]) -> list[float]:
        if key not in self:
            self.append([{"key": key, "values": [float(v) for v in compute()]}])
        return self.records[key]["values"]

    @property
    def rows(self) -> dict[str, list[float]]:
        return {k: r["values"] for k, r in self.records.items()}


def as_stored(value: Any) -> Any:
    """``value`` as it reads back from a JSON file: tuples become lists, paths (and anything
    else JSON lacks) their ``str``."""
    return json.loads(json.dumps(value, default=str))


def changed_keys(recorded: dict[str, Any], current: dict[str, Any],
                 keys: Iterable[str] | None = None) -> list[str]:
    """The keys whose values differ between a recorded input dict (as read back from JSON) and
    the current one, sorted; both sides are compared as stored (``as_stored``), so a tuple
    equals the list it was written as. ``keys`` limits the comparison (default: every key of
    either side); a key one side lacks reads as ``None`` there."""
    names = set(recorded) | set(current) if keys is None else set(keys)
    old, now = as_stored(dict(recorded)), as_stored(dict(current))
    return sorted(k for k in names if old.get(k) != now.get(k))


def sae_identity(sae: Any) -> dict[str, Any]:
    """An SAE (or crosscoder) by hook, size and a digest of its decoder and encoder weights."""
    h = hashlib.sha256()
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        t = getattr(sae, name, None)
        if t is not None:
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    meta = getattr(getattr(sae, "cfg", None), "metadata", None)
    return {"hook": getattr(meta, "hook_name", None),
            "d_sae": int(getattr(sae.cfg, "d_sae", 0)), "weights_sha256": h.hexdigest()}
