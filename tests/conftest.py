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
def evil_vector(subject, tmp_path_factory):
    """The evil persona vector at every layer (12 extraction questions), built once per test
    run: generating its answers dominates the cost and several modules need it, so the first
    xdist worker to ask builds and saves it (under a file lock) and the other loads that copy."""
    from filelock import FileLock

    from persona_probe.directions import Direction, persona_vector
    from persona_probe.traits import load_trait, trait_questions

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent                  # shared by every worker of this run
    path = root / "evil-vector"
    with FileLock(str(root / "evil-vector.lock")):
        if not (path / "direction.json").is_file():
            persona_vector(subject, load_trait("evil"),
                           questions=trait_questions("extract")[:12]).save(path)
    return Direction.load(path)


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


# Modules that take longest run first: with --dist loadscope a worker takes whole modules in
# collection order, and the organism (~8 min on its own) started last left one worker idle for
# minutes at the end of the run. A stable sort keeps every other test in its file order.
LONGEST_FIRST = ("test_organism.py", "test_notebooks.py")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)
