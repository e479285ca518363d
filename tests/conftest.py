"""Shared fixtures: the real embedded model (loaded once) and the shared data directory."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core; a single-threaded torch per worker (and in the
    # subprocesses tests start) avoids oversubscribing the cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

import pytest  # noqa: E402

from persona_probe.datasets import shared_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def subject():
    from persona_probe.models import load_subject

    return load_subject("smollm2-135m-instruct", device="cpu")


@pytest.fixture(scope="session")
def data_dir():
    root = shared_data_dir()
    if root is None:
        pytest.skip("../shared/data is absent (a user's clone): set PERSONA_PROBE_DATA to run "
                    "the tests that read real data")
    return root


@pytest.fixture(scope="session")
def real_chats(data_dir):
    """A few real chats: HH-RLHF transcripts and emergent-misalignment training samples."""
    from persona_probe.datasets import load_chat_jsonl, load_hh_rlhf

    hh = load_hh_rlhf(data_dir / "hh_rlhf" / "harmless_base_test.jsonl.gz", limit=6)
    em = load_chat_jsonl(data_dir / "emergent_misalignment" / "train" / "insecure.jsonl", limit=4)
    return hh + em
