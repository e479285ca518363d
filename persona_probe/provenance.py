"""Provenance recorded in every artifact: what produced it, from which code, when."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import subprocess
from pathlib import Path

_TRACKED_PACKAGES = (
    "persona-probe", "torch", "transformers", "transformer-lens", "sae-lens", "nnsight",
    "safetensors", "peft", "gguf", "numpy",
)


def package_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour the numbers depend on."""
    out: dict[str, str] = {}
    for name in _TRACKED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_sha(path: Path | None = None) -> str | None:
    """The commit of the persona_probe checkout (None outside a git checkout); '-dirty' if modified."""
    where = path or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def provenance(seed: int | None = None) -> dict[str, object]:
    """The common block of provenance fields; artifact writers add model, hook and positions."""
    return {
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "versions": package_versions(),
        "python": platform.python_version(),
        "seed": seed,
    }
