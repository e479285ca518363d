"""Readers for the public data sets in ``../shared/data`` (never copied into the project).

Each reader returns PromptItems and checks the file's sha256 against PROVENANCE.tsv when asked,
because a silently different file would silently change results.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
from pathlib import Path

from persona_probe.artifacts import sha256_file
from persona_probe.errors import PromptSetError
from persona_probe.prompts import PromptItem, load_jsonl


def shared_data_dir() -> Path | None:
    """``$PERSONA_PROBE_DATA``, else ``../shared/data`` beside the checkout; None if absent."""
    env = os.environ.get("PERSONA_PROBE_DATA")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent.parent
    candidates += [here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    return next((c for c in candidates if (c / "INVENTORY.md").is_file()), None)


def verify_provenance(path: Path) -> None:
    """Raise if ``path`` (inside the shared data dir) differs from its PROVENANCE.tsv sha256."""
    root = shared_data_dir()
    if root is None:
        return
    rel = str(Path(path).resolve().relative_to(root.resolve()))
    with open(root / "PROVENANCE.tsv", encoding="utf-8") as fh:
        expected = {r["file"]: r["sha256"] for r in csv.DictReader(fh, delimiter="\t")}
    if rel in expected and sha256_file(path) != expected[rel]:
        raise PromptSetError(f"{path} does not match its sha256 in PROVENANCE.tsv; restore the "
                             "original file")


def read_shared_csv(path: str | Path, error: type[Exception] = PromptSetError) -> list[dict]:
    """The rows of a CSV file of the shared data, checked against PROVENANCE.tsv first; a
    missing file raises ``error`` naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist; point $PERSONA_PROBE_DATA at the shared data")
    verify_provenance(path)
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """Split an HH-RLHF transcript (``\\n\\nHuman: … \\n\\nAssistant: …``) into messages."""
    parts = _TURN.split(text)
    msgs = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        content = content.strip()
        if not content:
            continue
        if msgs and msgs[-1]["role"] == role:  # merge repeated speakers
            msgs[-1]["content"] += "\n\n" + content
        else:
            msgs.append({"role": role, "content": content})
    return msgs


def load_hh_rlhf(path: str | Path, limit: int | None = None, field: str = "chosen",
                 verify: bool = True) -> list[PromptItem]:
    """HH-RLHF transcripts as chats ending with the assistant's reply."""
    path = Path(path)
    if verify:
        verify_provenance(path)
    items = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            msgs = parse_hh_transcript(json.loads(line)[field])
            if len(msgs) >= 2 and msgs[-1]["role"] == "assistant" and msgs[0]["role"] == "user":
                items.append(PromptItem(f"hh_rlhf/{field}/{lineno}", msgs, "hh_rlhf"))
            if limit is not None and len(items) >= limit:
                break
    return items


def load_chat_jsonl(path: str | Path, limit: int | None = None, verify: bool = True,
                    ) -> list[PromptItem]:
    """A ``{"messages": [...]}`` file such as the emergent-misalignment training sets."""
    path = Path(path)
    if verify:
        verify_provenance(path)
    return load_jsonl(path, limit)
