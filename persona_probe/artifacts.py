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
