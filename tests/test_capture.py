"""Capture on the real embedded model and real chats: correct rows, clean errors, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from persona_probe.capture import CaptureConfig, capture
from persona_probe.errors import HookPointError, ModelNotFoundError, PromptSetError, StoreError
from persona_probe.hooks import HookPoint, residual_hooks
from persona_probe.prompts import load_builtin
from persona_probe.store import ActivationStore

pytestmark = pytest.mark.slow
HOOKS = ("blocks.3.hook_resid_pre", "blocks.12.hook_resid_post")


@torch.no_grad()
def _unbatched(subject, ids):
    """Residuals of one chat run alone (no padding, no batching) at HOOKS."""
    got = {}
    fns = {HookPoint(3, "pre"): lambda r: got.__setitem__(HOOKS[0], r[0].clone()),
           HookPoint(12, "post"): lambda r: got.__setitem__(HOOKS[1], r[0].clone())}
    with residual_hooks(subject.model, fns):
        subject.model(input_ids=torch.tensor([ids]))
    return got


def test_response_rows_match_unbatched_forward(subject, real_chats, tmp_path):
    items = real_chats[:8]
    cfg = CaptureConfig(hooks=HOOKS, positions="response", storage_dtype="float32",
                        batch_size=3, shard_rows=50, max_tokens=1024, on_overflow="truncate")
    store = capture(subject, items, tmp_path / "s", cfg, progress=False, seed=0)
    index = store.index()
    assert store.n_rows == len(index["item"]) > 0
    for i, item in enumerate(items):
        enc = subject.encode_chat(item.messages, 1024, "truncate")
        rows = torch.nonzero(index["item"] == i).flatten()
        assert len(rows) == enc.response_end - enc.response_start
        assert index["position"][rows].tolist() == list(range(enc.response_start,
                                                              enc.response_end))
        assert index["token_id"][rows].tolist() == enc.input_ids[enc.response_start:
                                                                 enc.response_end]
        assert set(index["role"][rows].tolist()) == {2}
        ref = _unbatched(subject, enc.input_ids)
        for h in HOOKS:
            want = ref[h][enc.response_start:enc.response_end]
            torch.testing.assert_close(store.rows(h, rows), want, rtol=1e-4, atol=1e-4)
    meta = store.meta
    assert meta["model"]["model"] == "smollm2-135m-instruct"
    assert meta["model"]["revision"].startswith("gguf-sha256:")
    assert meta["positions"] == "response" and set(meta["hooks"]) == set(HOOKS)
    assert {"created_utc", "git_sha", "versions", "seed"} <= set(meta["provenance"])
    assert meta["provenance"]["versions"]["torch"]


def test_mean_prompt_last_and_all_positions(subject, real_chats, tmp_path):
    items = real_chats[:4]
    base = dict(hooks=HOOKS[1:], storage_dtype="float32", batch_size=2, max_tokens=1024,
                on_overflow="truncate")
    resp = capture(subject, items, tmp_path / "r", CaptureConfig(positions="response", **base),
                   progress=False)
    mean = capture(subject, items, tmp_path / "m",
                   CaptureConfig(positions="response_mean", **base), progress=False)
    last = capture(subject, items, tmp_path / "l",
                   CaptureConfig(positions="prompt_last", **base), progress=False)
    allp = capture(subject, items, tmp_path / "a", CaptureConfig(positions="all", **base),
                   progress=False)
    r_idx, m_idx = resp.index(), mean.index()
    h = HOOKS[1]
    for row, i in enumerate(m_idx["item"].tolist()):
        rows = torch.nonzero(r_idx["item"] == i).flatten()
        torch.testing.assert_close(mean.rows(h, [row])[0], resp.rows(h, rows).mean(0),
                                   rtol=1e-5, atol=1e-5)
    assert last.n_rows == len(items) == mean.n_rows
    a_idx = allp.index()
    special = set(subject.tokenizer.all_special_ids)
    assert not special & set(a_idx["token_id"].tolist())
    expected = sum(sum(t not in special for t in subject.encode_chat(
        it.messages, 1024, "truncate").input_ids) for it in items)
    assert allp.n_rows == expected


def test_builtin_prompts_prompt_last(subject, tmp_path):
    items = load_builtin("harmful_requests")[:6]
    store = capture(subject, items, tmp_path / "s", CaptureConfig(positions="prompt_last"),
                    progress=False)
    assert store.n_rows == 6
    assert store.all_rows("blocks.15.hook_resid_post").dtype == torch.float16
    chats = json.loads((tmp_path / "s" / "chats.json").read_text())
    assert chats[0]["subcategory"] == "harassment"


def test_clear_errors(subject, tmp_path):
    from persona_probe.models import load_subject

    items = load_builtin("code")[:2]
    with pytest.raises(ModelNotFoundError, match="not a known alias.*smollm2-135m-instruct"):
        load_subject("no-such-org/no-such-model-xyz")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_subject("./missing/checkpoint")
    with pytest.raises(HookPointError, match="out of range.*0..29"):
        capture(subject, items, tmp_path / "a",
                CaptureConfig(hooks=("blocks.40.hook_resid_post",)), progress=False)
    with pytest.raises(HookPointError, match="unknown hook point"):
        CaptureConfig(hooks=("blocks.4.attn_out",))
    with pytest.raises(PromptSetError, match="empty"):
        capture(subject, [], tmp_path / "b", progress=False)
    with pytest.raises(PromptSetError, match="no assistant response.*--generate"):
        capture(subject, items, tmp_path / "c", CaptureConfig(positions="response"),
                progress=False)
    long = [items[0].with_response("word " * 400)]
    with pytest.raises(PromptSetError, match="longer than the limit of 128"):
        capture(subject, long, tmp_path / "d", CaptureConfig(max_tokens=128), progress=False)
    with pytest.warns(UserWarning, match="truncated"):
        st = capture(subject, long, tmp_path / "e",
                     CaptureConfig(max_tokens=128, on_overflow="truncate"), progress=False)
    assert st.n_rows > 0
    assert not any((tmp_path / x).exists() for x in "abcd")
    capture(subject, items, tmp_path / "f", CaptureConfig(positions="prompt_last"),
            progress=False)
    with pytest.raises(StoreError, match="already holds.*--resume.*--overwrite"):
        capture(subject, items, tmp_path / "f", CaptureConfig(positions="prompt_last"),
                progress=False)
    with pytest.raises(StoreError, match="different settings.*positions"):
        capture(subject, items, tmp_path / "f", CaptureConfig(positions="all"), resume=True,
                progress=False)


def _cli(*args, **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "persona_probe.cli", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kw)


def _data_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.safetensors"))}


def test_sigkill_mid_capture_then_resume_is_byte_identical(real_chats, data_dir, tmp_path):
    from persona_probe.datasets import load_hh_rlhf

    items = load_hh_rlhf(data_dir / "hh_rlhf" / "harmless_base_test.jsonl.gz", limit=40)
    prompts = tmp_path / "chats.jsonl"
    prompts.write_text("".join(json.dumps({"id": it.id, "messages": it.messages}) + "\n"
                               for it in items))
    args = ["capture", "--prompts", str(prompts), "--positions", "all", "--hooks",
            ",".join(HOOKS), "--shard-rows", "64", "--batch-size", "4", "--max-tokens", "512",
            "--on-overflow", "truncate"]
    killed = tmp_path / "killed"
    proc = _cli(*args, "--out", str(killed))
    deadline = time.time() + 240
    while time.time() < deadline:
        prog = killed / "progress.json"
        if prog.is_file():
            state = json.loads(prog.read_text())
            if len(state["shards"]) >= 3:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((killed / "progress.json").read_text())
    assert not state["complete"], "capture finished before it could be killed; give it more work"
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(killed)
    out, _ = _cli(*args, "--out", str(killed), "--resume").communicate(timeout=600)
    assert "activations written" in out, out[-2000:]
    full = tmp_path / "full"
    out, _ = _cli(*args, "--out", str(full)).communicate(timeout=600)
    assert "activations written" in out, out[-2000:]
    a, b = _data_files(killed), _data_files(full)
    assert a.keys() == b.keys() and len(a) > 3
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    sa, sb = ActivationStore(killed, verify="all"), ActivationStore(full, verify="all")
    assert sa.n_rows == sb.n_rows == sa.meta["n_rows"]
    assert torch.equal(sa.index()["item"], sb.index()["item"])


def test_cli_info_and_clean_error_exit(tmp_path, real_chats):
    out, _ = _cli("capture", "--prompts", "builtin:code", "--limit", "3", "--positions",
                  "prompt_last", "--out", str(tmp_path / "s")).communicate(timeout=300)
    assert "activations written to" in out and "rows         3 x d_model 576" in out
    out, _ = _cli("info", str(tmp_path / "s"), "--verify").communicate(timeout=120)
    assert "all files verified" in out
    proc = _cli("capture", "--hooks", "blocks.99.hook_resid_post", "--out",
                str(tmp_path / "x"))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "error: layer 99 is out of range" in out and "Traceback" not in out
