"""One way to run a stage of an experiment: reuse its output only when it came from the same
inputs.

A stage is a directory ``root/<name>/`` holding whatever the stage writes plus ``stage.json``:
the stage's name, a fingerprint (sha256 of its canonical inputs: config fields, command,
model / adapter / SAE identities, data sha256s, the fingerprints of the stages it reads), the
inputs themselves, the git sha of the code, and ``compute_seconds``. Running a stage again

- reuses a finished directory whose fingerprint matches (nothing recomputed);
- resumes an interrupted one with the same fingerprint (the build function continues from
  whatever it committed, e.g. a finetune checkpoint or a JSON-lines log);
- refuses, with an error naming ``--overwrite``, a directory made from other inputs: a stale
  output is never silently reused; with ``overwrite=True`` it is deleted and rebuilt.

``from_scratch`` is true only when every stage of the run was produced at one clean commit, so
a results file can say whether the numbers come from one version of the code (a run may still
resume across sessions at that commit).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from persona_probe.artifacts import changed_keys, read_json, sha256_file, write_json
from persona_probe.artifacts import sae_identity as _sae_identity
from persona_probe.errors import PersonaProbeError
from persona_probe.provenance import git_sha

T = TypeVar("T")
STAGE_FILE = "stage.json"


class StageMismatchError(PersonaProbeError):
    """A stage directory holds output made from other inputs than the ones asked for now."""


def canonical(obj: Any) -> str:
    """The JSON text a fingerprint is taken of: sorted keys, no whitespace, paths as text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(dict(inputs)).encode("utf-8")).hexdigest()


def file_identity(path: str | Path) -> dict[str, Any]:
    """A data file by content, not by name (the same bytes anywhere give the same identity)."""
    p = Path(path)
    return {"name": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}


def adapter_identity(path: str | Path | None) -> dict[str, Any] | None:
    """A PEFT adapter directory by the sha256 of its weights (None: no adapter)."""
    if path is None:
        return None
    p = Path(path)
    weights = sorted(p.glob("adapter_model.*"))
    if not weights:
        raise StageMismatchError(f"{p} holds no adapter_model.* file; it is not a finished "
                                 "adapter directory")
    return {"name": p.name, "sha256": {w.name: sha256_file(w) for w in weights}}


def subject_identity(subject: Any) -> dict[str, Any]:
    """A loaded model as stage inputs know it: model id, revision, dtype, architecture (an
    adapter it carries is identified separately, by ``adapter_identity``)."""
    p = subject.provenance()
    return {k: p.get(k) for k in ("model", "revision", "dtype", "architecture")}


# an SAE's (or crosscoder's) identity for stage inputs; defined with the other digests
sae_identity = _sae_identity


@dataclass
class StageRecord:
    name: str
    fingerprint: str
    inputs: dict[str, Any]
    git_sha: str | None
    status: str = "running"                 # running | done
    compute_seconds: float = 0.0            # summed over every attempt that recorded its time
    attempts: int = 0
    finished_utc: str | None = None

    @classmethod
    def read(cls, path: Path) -> StageRecord:
        raw = read_json(path)
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@dataclass
class Stages:
    """The stages of one run under ``root``; ``overwrite`` rebuilds mismatched ones."""

    root: Path
    overwrite: bool = False
    records: dict[str, StageRecord] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def dir(self, name: str) -> Path:
        return self.root / name

    def fingerprint_of(self, name: str) -> str:
        """A finished stage's fingerprint: put it in a later stage's inputs, so rebuilding an
        upstream stage invalidates everything that read it."""
        if name not in self.records:
            raise KeyError(f"stage {name!r} has not run in this session")
        return self.records[name].fingerprint

    def run(self, name: str, inputs: Mapping[str, Any], build: Callable[[Path], T],
            load: Callable[[Path], T] | None = None) -> T:
        """``build(dir)`` unless ``dir`` already holds this stage from the same inputs; a
        finished stage returns ``load(dir)`` (default: ``build``, which must then be cheap to
        call on finished output, as resumable builders are)."""
        d = self.dir(name)
        rec_path = d / STAGE_FILE
        fp = fingerprint(inputs)
        inputs = json.loads(canonical(dict(inputs)))
        prior_seconds, attempts, prior_sha = 0.0, 0, None
        if rec_path.is_file():
            old = StageRecord.read(rec_path)
            if old.fingerprint != fp:
                if not self.overwrite:
                    changed = changed_keys(old.inputs, inputs)
                    raise StageMismatchError(
                        f"stage {name!r} in {d} was produced from other inputs (they differ "
                        f"in: {', '.join(changed) or 'the fingerprint'}); re-run with "
                        "--overwrite to rebuild it and the stages after it, or give --runs a "
                        "new directory")
                shutil.rmtree(d)
            elif old.status == "done":
                self.records[name] = old
                return (load or build)(d)
            else:
                prior_seconds, attempts, prior_sha = old.compute_seconds, old.attempts, old.git_sha
        elif d.is_dir() and any(d.iterdir()):
            if not self.overwrite:
                raise StageMismatchError(
                    f"{d} holds files but no {STAGE_FILE}, so nothing says what produced them; "
                    "re-run with --overwrite to rebuild the stage, or give --runs a new "
                    "directory")
            shutil.rmtree(d)
        sha = git_sha()
        if attempts and prior_sha != sha:      # resumed under other code: not one commit
            sha = f"mixed:{prior_sha},{sha}"
        rec = StageRecord(name, fp, inputs, sha, "running", prior_seconds, attempts + 1)
        write_json(rec_path, rec.__dict__)
        t0 = time.perf_counter()
        try:
            result = build(d)
        finally:
            rec.compute_seconds = round(prior_seconds + time.perf_counter() - t0, 1)
            write_json(rec_path, rec.__dict__)
        rec.status = "done"
        rec.finished_utc = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        write_json(rec_path, rec.__dict__)
        self.records[name] = rec
        return result

    # --- what a results file says about the run ------------------------------------------

    def compute_seconds(self) -> dict[str, float]:
        return {n: r.compute_seconds for n, r in self.records.items()}

    def git_shas(self) -> dict[str, str | None]:
        return {n: r.git_sha for n, r in self.records.items()}

    def from_scratch(self) -> bool:
        """Every stage produced at one clean commit (resuming at that commit is allowed)."""
        shas = set(self.git_shas().values())
        if len(shas) != 1 or None in shas:
            return False
        sha = str(next(iter(shas)))
        return not (sha.endswith("-dirty") or sha.startswith("mixed:"))

    def summary(self) -> dict[str, Any]:
        return {"from_scratch": self.from_scratch(), "stage_git_shas": self.git_shas(),
                "compute_seconds": self.compute_seconds(),
                "fingerprints": {n: r.fingerprint for n, r in self.records.items()}}
