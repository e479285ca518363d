"""Injected faults: the disk fills up mid-capture and mid-SAE-training (a file-size limit,
RLIMIT_FSIZE, dropped to 512 bytes after some progress), and SAE and direction files are
truncated or bit-flipped. Each must end in a clear persona_probe error, leave the last committed
state readable, and resume to the result of an uninterrupted run. (SIGKILL then resume is in
test_capture, test_sae and test_training.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from persona_probe.errors import PersonaProbeError

pytestmark = pytest.mark.slow
HOOK = "blocks.15.hook_resid_post"

#: Shared by the child scripts: from the n-th call of ``target`` on, every file write beyond
#: 512 bytes fails with EFBIG, as on a full disk (SIGXFSZ ignored so Python sees the error).
DISK_FULL = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
def disk_full_after(owner, name, n):
    original, calls = getattr(owner, name), [0]
    def wrapped(*a, **kw):
        calls[0] += 1
        if calls[0] == n:
            resource.setrlimit(resource.RLIMIT_FSIZE, (512, resource.RLIM_INFINITY))
        return original(*a, **kw)
    setattr(owner, name, wrapped)
    return lambda: (setattr(owner, name, original),
                    resource.setrlimit(resource.RLIMIT_FSIZE,
                                       (resource.RLIM_INFINITY, resource.RLIM_INFINITY)))
"""


def _child(script: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", DISK_FULL + textwrap.dedent(script)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def test_disk_full_mid_capture_keeps_committed_shards_and_resumes(tmp_path):
    """One process (one model load): a reference capture; a capture whose third shard write
    hits the limit (snapshot of what it left); the resume of that capture."""
    out = _child(f"""
        import shutil
        from persona_probe.capture import CaptureConfig, capture
        from persona_probe.errors import PersonaProbeError
        from persona_probe.models import load_subject
        from persona_probe.prompts import load_prompts
        from persona_probe.store import ActivationStoreWriter
        root = {str(tmp_path)!r}
        subject = load_subject("smollm2-135m-instruct", device="cpu")
        items = load_prompts("builtin:everyday,advice", 40)
        cfg = CaptureConfig(hooks=({HOOK!r},), positions="all", shard_rows=128, batch_size=4)
        capture(subject, items, root + "/ref", cfg, progress=False)
        restore = disk_full_after(ActivationStoreWriter, "_flush", 3)
        try:
            capture(subject, items, root + "/full", cfg, progress=False)
            print("NO ERROR")
        except PersonaProbeError as exc:
            print("ERROR:", exc)
        restore()
        shutil.copytree(root + "/full", root + "/snapshot")
        capture(subject, items, root + "/full", cfg, resume=True, progress=False)
    """)
    from persona_probe.store import ActivationStore

    assert "ERROR: could not write" in out and "Free disk space" in out, out
    assert "Traceback" not in out
    snap = ActivationStore(tmp_path / "snapshot", verify="all", allow_incomplete=True)
    assert not snap.complete and len(snap.shards) == 2 and snap.n_rows == 256
    assert not [p for p in (tmp_path / "snapshot").rglob("*") if p.name.endswith(".tmp")]
    ref = ActivationStore(tmp_path / "ref", verify="all")
    done = ActivationStore(tmp_path / "full", verify="all")
    assert ref.n_rows == done.n_rows > 256
    assert torch.equal(ref.all_rows(HOOK), done.all_rows(HOOK))
    assert torch.equal(snap.all_rows(HOOK), ref.all_rows(HOOK)[:256])
    assert all(torch.equal(ref.index()[k], done.index()[k]) for k in ref.index())


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """A real activation store of the embedded model (everyday prompts, all positions)."""
    out = tmp_path_factory.mktemp("faults") / "store"
    _child(f"""
        from persona_probe.capture import CaptureConfig, capture
        from persona_probe.models import load_subject
        from persona_probe.prompts import load_prompts
        capture(load_subject("smollm2-135m-instruct", device="cpu"),
                load_prompts("builtin:everyday", 40), {str(out)!r},
                CaptureConfig(hooks=({HOOK!r},), positions="all", shard_rows=512),
                progress=False)
    """)
    return out


def _sae_cfg(store, **kw) -> dict:
    return {"store": str(store), "hook": HOOK, "expansion_factor": 2, "k": 16,
            "batch_size": 256, "training_tokens": 24 * 256, "lr": 1e-3, "checkpoint_every": 6,
            "log_every": 6, "window_rows": 1024, "holdout_fraction": 0.1, "seed": 0,
            "device": "cpu", **kw}


def test_disk_full_at_an_sae_checkpoint_keeps_the_last_one_and_resumes(small_store, tmp_path):
    cfg = _sae_cfg(small_store)
    out = _child(f"""
        import json
        from persona_probe.errors import PersonaProbeError
        from persona_probe.sae import SAETrainConfig, train_sae
        import persona_probe.sae.train as train
        cfg = SAETrainConfig(**{cfg!r})
        root = {str(tmp_path)!r}
        train_sae(cfg, root + "/ref", progress=False)
        restore = disk_full_after(train, "_save_checkpoint", 2)   # steps 6 ok, 12 fails
        try:
            train_sae(cfg, root + "/full", progress=False)
            print("NO ERROR")
        except PersonaProbeError as exc:
            print("ERROR:", exc)
        restore()
        print("POINTER", json.dumps(json.load(open(root + "/full/checkpoint/trainer.json"))))
        train_sae(cfg, root + "/full", resume=True, progress=False)
    """)
    assert "ERROR: could not write" in out and "Free disk space" in out, out
    pointer = json.loads(out.split("POINTER ", 1)[1].splitlines()[0])
    assert pointer["step"] == 6        # the last committed checkpoint stayed the live one
    a = load_file(tmp_path / "ref" / "sae_weights.safetensors")
    b = load_file(tmp_path / "full" / "sae_weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_log = (tmp_path / "ref" / "training_log.jsonl").read_text().splitlines()
    full_log = (tmp_path / "full" / "training_log.jsonl").read_text().splitlines()
    assert len(full_log) >= len(ref_log)   # rows past the checkpoint may repeat, none missing


@pytest.fixture(scope="module")
def trained_sae(small_store, tmp_path_factory):
    from persona_probe.sae import SAETrainConfig, train_sae

    out = tmp_path_factory.mktemp("faults") / "sae"
    return train_sae(SAETrainConfig(**_sae_cfg(small_store, training_tokens=6 * 256)), out,
                     progress=False)


def _flip_byte(path, offset_from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "bitflip_cfg"])
def test_damaged_sae_files_are_detected(trained_sae, tmp_path, damage):
    from persona_probe.sae import SAELoadError, load_sae

    sae_dir = tmp_path / "sae"
    shutil.copytree(trained_sae, sae_dir)
    load_sae(sae_dir)   # intact: loads
    weights = sae_dir / "sae_weights.safetensors"
    if damage == "bitflip":
        _flip_byte(weights)
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-1000])
    else:
        cfg = sae_dir / "cfg.json"
        cfg.write_text(cfg.read_text().replace('"k": 16', '"k": 17'))
    name = "cfg.json" if damage == "bitflip_cfg" else "sae_weights.safetensors"
    with pytest.raises(SAELoadError, match=f"{name} is corrupted or truncated.*retrain"):
        load_sae(sae_dir)
    # without our checksum record (an SAE from elsewhere) a truncated file is still a clear
    # persona_probe error, not a safetensors traceback
    if damage == "truncate":
        (sae_dir / "persona_probe.json").unlink()
        with pytest.raises(SAELoadError, match="cannot load as a sae-lens SAE"):
            load_sae(sae_dir)


def test_damaged_direction_files_are_detected(tmp_path):
    from persona_probe.directions import Direction, DirectionError

    d = Direction("evil", [3, 15], torch.randn(2, 576), meta={"model": "m"})
    path = d.save(tmp_path / "dir")
    back = Direction.load(path)
    assert torch.equal(back.vectors, d.vectors) and back.meta == {"model": "m"}
    tensors = path / "direction.safetensors"
    good = tensors.read_bytes()
    _flip_byte(tensors, 10)
    with pytest.raises(DirectionError, match="corrupted.*sha256"):
        Direction.load(path)
    tensors.write_bytes(good[:-50])
    with pytest.raises(DirectionError, match="corrupted"):
        Direction.load(path)
    tensors.write_bytes(good)
    (path / "direction.json").write_text("{not json")
    with pytest.raises(DirectionError, match="not a direction's metadata"):
        Direction.load(path)


def test_failed_json_write_keeps_the_old_file(tmp_path):
    """The shared writer under every artifact: a write that hits the limit leaves the old
    version and no temporary behind, and says what to do."""
    out = _child(f"""
        import resource
        from persona_probe.artifacts import ArtifactWriteError, write_json
        target = {str(tmp_path / "results.json")!r}
        write_json(target, {{"v": 1}})
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, resource.RLIM_INFINITY))
        try:
            write_json(target, {{"v": list(range(1000))}})
        except ArtifactWriteError as exc:
            print("ERROR:", exc)
    """)
    from persona_probe.artifacts import ArtifactWriteError, read_json

    assert "results.json" in out and "previous version of that file, if any, is intact" in out
    assert read_json(tmp_path / "results.json") == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert issubclass(ArtifactWriteError, PersonaProbeError)
