"""ActivationStore round trip, integrity and refusal rules (no model needed)."""

from __future__ import annotations

import json

import pytest
import torch

from persona_probe.errors import StoreError
from persona_probe.store import INDEX_FIELDS, ActivationStore, ActivationStoreWriter

HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]


def _rows(n: int, start: int, d: int = 8, dtype=torch.float16):
    g = torch.Generator().manual_seed(start)
    acts = {h: torch.randn(n, d, generator=g).to(dtype) for h in HOOKS}
    index = {"item": torch.arange(start, start + n), "position": torch.arange(n),
             "role": torch.full((n,), 2), "token_id": torch.arange(n) + 100}
    return acts, index


def _write(root, chunks=(7, 13, 5, 11), shard_rows=10, dtype=torch.float16, **kw):
    w = ActivationStoreWriter(root, {"fingerprint": "abc", "positions": "response"},
                              [f"item{i}" for i in range(100)], HOOKS, 8, shard_rows, **kw)
    written = []
    start = 0
    for n in chunks:
        acts, index = _rows(n, start, dtype=dtype)
        w.append(acts, index)
        written.append((acts, index))
        start += n
    return w, written


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_round_trip_rows_index_and_batches(tmp_path, dtype):
    w, written = _write(tmp_path / "s", dtype=dtype)
    store = w.finalize()
    expected = {h: torch.cat([a[h] for a, _ in written]) for h in HOOKS}
    assert store.n_rows == 36 and len(store.shards) == 4  # 10 + 10 + 10 + 6
    for h in HOOKS:
        assert torch.equal(store.all_rows(h), expected[h])
        assert store.all_rows(h).dtype == dtype
        idx = torch.tensor([35, 0, 17, 10, 9])
        assert torch.equal(store.rows(h, idx), expected[h][idx])
    index = store.index()
    assert torch.equal(index["item"], torch.cat([i["item"] for _, i in written]))
    assert set(index) == set(INDEX_FIELDS)
    batches = list(store.iter_batches(HOOKS[0], batch_size=4, shuffle=True, buffer_rows=12))
    got = torch.cat(batches)
    assert got.shape == expected[HOOKS[0]].shape
    # a permutation of the stored rows: every row exactly once
    key = lambda t: sorted(map(tuple, t.float().tolist()))  # noqa: E731
    assert key(got) == key(expected[HOOKS[0]])
    assert not torch.equal(got, expected[HOOKS[0]])
    with pytest.raises(StoreError, match="row numbers"):
        store.rows(HOOKS[0], [36])
    with pytest.raises(StoreError, match="not in this store"):
        store.shard("blocks.9.hook_resid_post", 0)


def test_corruption_is_detected(tmp_path):
    _write(tmp_path / "s")[0].finalize()
    shard = tmp_path / "s" / HOOKS[1] / "00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    store = ActivationStore(tmp_path / "s")
    store.shard(HOOKS[1], 0)  # untouched shard reads fine
    with pytest.raises(StoreError, match="00001.safetensors is corrupted.*--overwrite"):
        store.shard(HOOKS[1], 1)
    with pytest.raises(StoreError, match="corrupted"):
        ActivationStore(tmp_path / "s", verify="all")


def test_incomplete_store_refused_unless_allowed(tmp_path):
    w, _ = _write(tmp_path / "s")  # not finalized: 3 committed shards, 6 rows buffered
    with pytest.raises(StoreError, match="incomplete.*--resume"):
        ActivationStore(tmp_path / "s")
    assert ActivationStore(tmp_path / "s", allow_incomplete=True).n_rows == 30


def test_failed_write_never_leaves_a_complete_looking_shard(tmp_path, monkeypatch):
    import persona_probe.store as store_mod

    w, _ = _write(tmp_path / "s", chunks=(10,))  # one committed shard
    real = store_mod.save_file

    def failing(tensors, path):
        real(tensors, path)
        with open(path, "r+b") as fh:  # half a file, then the disk "fills"
            fh.truncate(40)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod, "save_file", failing)
    acts, index = _rows(10, 10)
    from persona_probe.artifacts import ArtifactWriteError

    with pytest.raises(ArtifactWriteError, match="No space left.*Free disk space"):
        w.append(acts, index)
    monkeypatch.setattr(store_mod, "save_file", real)
    files = sorted(p.name for p in (tmp_path / "s").rglob("*") if p.is_file())
    assert not any(f.endswith(".tmp") for f in files)
    assert files.count("00001.safetensors") == 0
    reader = ActivationStore(tmp_path / "s", allow_incomplete=True, verify="all")
    assert reader.n_rows == 10


def test_existing_store_rules(tmp_path):
    _write(tmp_path / "s")[0].finalize()
    with pytest.raises(StoreError, match="already holds.*--resume.*--overwrite"):
        _write(tmp_path / "s")
    with pytest.raises(StoreError, match="different settings"):
        ActivationStoreWriter(tmp_path / "s", {"fingerprint": "other", "positions": "all"},
                              [], HOOKS, 8, 10, resume=True)
    w, _ = _write(tmp_path / "s", chunks=(3,), overwrite=True)
    assert w.finalize().n_rows == 3
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not an activation store"):
        _write(tmp_path / "junk")
    assert (tmp_path / "junk" / "notes.txt").read_text() == "keep me"


def test_resume_removes_orphan_shards(tmp_path):
    w, _ = _write(tmp_path / "s", chunks=(25,))  # two committed shards
    progress = json.loads((tmp_path / "s" / "progress.json").read_text())
    progress["shards"] = progress["shards"][:1]  # as if killed before committing shard 1
    (tmp_path / "s" / "progress.json").write_text(json.dumps(progress))
    w2 = ActivationStoreWriter(tmp_path / "s", {"fingerprint": "abc", "positions": "response"},
                               [], HOOKS, 8, 10, resume=True)
    assert w2.rows_committed == 10
    assert not (tmp_path / "s" / HOOKS[0] / "00001.safetensors").exists()
