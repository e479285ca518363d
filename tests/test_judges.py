"""Judges: exact number probabilities on the real model, and the HTTP judge against a real
OpenAI-compatible server on loopback (``persona-probe serve``, FastAPI + uvicorn)."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import torch

from persona_probe.evals.judges import (
    CachedJudge, JudgeError, Judgment, JudgmentCache, LogprobJudge, OpenAIJudge,
    _digit_start_mask, _score_samples, _score_top_logprobs, expected_score, frozen_copy,
    integer_distribution, make_judge)

#: The loopback server's bearer key: distinctive, so a scan of a run's outputs cannot miss it.
KEY = "pp-secret-3f9a7c1e5b"
PROMPT = ("On a scale of 0 to 100, how helpful is this answer to 'What is the capital of "
          "France?': 'Paris is the capital of France.' Answer with a number only.")


def test_expected_score_declines_below_min_mass():
    probs = np.zeros(101)
    probs[[20, 80]] = 0.1
    low = expected_score(probs)
    assert low.score is None and low.raw == pytest.approx(50.0)   # 0.2 < 0.25, as EM does
    probs[[20, 80]] = 0.3
    j = expected_score(probs)
    assert j.score == pytest.approx(50.0) and j.mass == pytest.approx(0.6)


def test_top_logprob_and_sample_scoring():
    top = [SimpleNamespace(token=t, logprob=math.log(p)) for t, p in
           [("90", 0.5), ("100", 0.25), ("REF", 0.2), ("-5", 0.05)]]
    assert _score_top_logprobs(top, 0.25).score == pytest.approx((90 * .5 + 100 * .25) / .75)
    assert _score_samples(["85", " 95.", "nope", "120"], 0.25).score == pytest.approx(90)
    assert _score_samples(["nope", "no"], 0.25).score is None


def test_cache_roundtrip(tmp_path):
    cache = JudgmentCache(tmp_path / "c.sqlite")
    cache.put("judge-a", "prompt", Judgment(42.0, 0.9))
    cache.put("judge-a", "other", Judgment(None, 0.1, 33.0))
    again = JudgmentCache(tmp_path / "c.sqlite")
    assert again.get("judge-a", "prompt") == Judgment(42.0, 0.9)
    assert again.get("judge-a", "other") == Judgment(None, 0.1, 33.0)
    assert again.get("judge-b", "prompt") is None and len(again) == 2


def test_bad_judge_specs(monkeypatch):
    with pytest.raises(JudgeError, match="unknown judge"):
        make_judge("gpt4")
    with pytest.raises(JudgeError, match="frozen copy"):
        make_judge("self")
    monkeypatch.delenv("PP_TEST_KEY", raising=False)
    with pytest.raises(JudgeError, match="PP_TEST_KEY"):
        OpenAIJudge("m", base_url="http://127.0.0.1:9/v1", api_key_env="PP_TEST_KEY")


@pytest.mark.slow
def test_integer_distribution_matches_teacher_forcing(subject):
    """The token-tree pass gives the same P(n) as scoring each number as a full reply."""
    probs = integer_distribution(subject, PROMPT)
    digit = _digit_start_mask(subject)
    msgs = [{"role": "user", "content": PROMPT}]
    for n in (7, 42, 100):
        enc = subject.encode_chat([*msgs, {"role": "assistant", "content": str(n)}])
        with torch.no_grad():
            lp = subject.model(torch.tensor([enc.input_ids])).logits[0].float().log_softmax(-1)
        a, b = enc.response_start, enc.response_end
        ref = sum(lp[i - 1, enc.input_ids[i]].item() for i in range(a, b))
        ref = math.exp(ref) * (1 - lp[b - 1].exp()[digit].sum().item())
        assert probs[n] == pytest.approx(ref, rel=1e-3)


@pytest.mark.slow
def test_frozen_copy_is_not_steered(subject):
    from persona_probe.directions import random_direction
    from persona_probe.interventions import steer

    judge = LogprobJudge(frozen_copy(subject))
    before = integer_distribution(judge.subject, PROMPT)
    d = random_direction(subject.d_model, [10], seed=1)
    with steer(subject, d, 2.0, [10]):
        steered_self = integer_distribution(subject, PROMPT)
        frozen = integer_distribution(judge.subject, PROMPT)
    np.testing.assert_allclose(frozen, before, rtol=1e-5)
    assert np.abs(steered_self - before).max() > 1e-4   # the steering did act on the original


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """``persona-probe serve`` on loopback with a bearer key, stopped after the module."""
    port = _free_port()
    env = {**os.environ, "PP_SERVER_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "persona_probe.cli", "serve", "--port", str(port),
         "--api-key-env", "PP_SERVER_KEY", "--device", "cpu"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"},
                         timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("server did not start in 180 s")
    yield SimpleNamespace(url=url, base_url=f"{url}/v1")
    proc.terminate()
    proc.wait(timeout=30)


def _requests(server) -> int:
    return httpx.get(f"{server.url}/persona_probe/stats").json()["chat_completions"]


@pytest.mark.slow
def test_http_judge_scores_through_real_server_and_caches(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PP_JUDGE_KEY", KEY)
    judge = OpenAIJudge("smollm2-135m-instruct", base_url=server.base_url,
                        api_key_env="PP_JUDGE_KEY", mode="sample", samples=6, concurrency=2)
    cached = CachedJudge(judge, tmp_path / "cache.sqlite")
    prompts = [PROMPT, PROMPT.replace("helpful", "clear")]
    n0 = _requests(server)
    first = cached.judge(prompts)
    assert _requests(server) == n0 + 2
    assert all(isinstance(j, Judgment) and 0 <= j.mass <= 1 for j in first)
    assert all(j.score is None or 0 <= j.score <= 100 for j in first)
    again = cached.judge(prompts)                       # served from the cache
    assert again == first and _requests(server) == n0 + 2
    lp = OpenAIJudge("smollm2-135m-instruct", base_url=server.base_url,
                     api_key_env="PP_JUDGE_KEY", mode="logprobs").judge([PROMPT])[0]
    assert 0 < lp.mass <= 1.0 + 1e-6                    # first-token digits carry the mass
    assert KEY not in (tmp_path / "cache.sqlite").read_bytes().decode("latin-1")


@pytest.mark.slow
def test_http_judge_errors_keep_judged_results(server, tmp_path, monkeypatch):
    monkeypatch.setenv("PP_JUDGE_KEY", "wrong")
    bad_key = OpenAIJudge("m", base_url=server.base_url, api_key_env="PP_JUDGE_KEY",
                          mode="sample", samples=2)
    with pytest.raises(JudgeError, match="rejected the API key in PP_JUDGE_KEY"):
        bad_key.judge([PROMPT])
    monkeypatch.setenv("PP_JUDGE_KEY", KEY)
    cache = JudgmentCache(tmp_path / "cache.sqlite")
    good = CachedJudge(OpenAIJudge("m", base_url=server.base_url, api_key_env="PP_JUDGE_KEY",
                                   mode="sample", samples=2), cache)
    kept = good.judge([PROMPT])[0]
    dead = CachedJudge(OpenAIJudge("m", base_url=f"http://127.0.0.1:{_free_port()}/v1",
                                   api_key_env="PP_JUDGE_KEY", mode="sample", samples=2,
                                   max_retries=1, timeout=5), cache)
    dead.identity = good.identity                       # same judge, endpoint gone
    with pytest.raises(JudgeError, match="could not be reached"):
        dead.judge([PROMPT, "a prompt never judged"])
    assert JudgmentCache(tmp_path / "cache.sqlite").get(good.identity, PROMPT) == kept


@pytest.mark.slow
def test_api_key_never_reaches_artifacts_logs_or_errors(server, data_dir, tmp_path):
    """A CLI run that used a key (judge agreement through the HTTP judge), and one whose key
    the server rejects: the key is in no file they wrote (results, item log, judge cache), and
    in none of their output or error messages."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PP_JUDGE_KEY": KEY}
    cmd = [sys.executable, "-m", "persona_probe.cli", "eval", "agreement", "--judge",
           "openai:smollm2-135m-instruct", "--judge-url", server.base_url, "--judge-key-env",
           "PP_JUDGE_KEY", "--sets", "xstest_gpt4", "--n-per-set", "4"]
    ok = subprocess.run([*cmd, "--out", str(tmp_path / "ok")], env=env, capture_output=True,
                        text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "judge accuracy" in ok.stdout
    wrong = KEY[::-1]
    bad = subprocess.run([*cmd, "--out", str(tmp_path / "bad")],
                         env={**env, "PP_JUDGE_KEY": wrong}, capture_output=True, text=True,
                         timeout=600)
    assert bad.returncode == 2 and "rejected the API key in PP_JUDGE_KEY" in bad.stderr
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert len(files) >= 3   # results, item log and judge cache of the good run at least
    for secret in (KEY, wrong):
        for text in (ok.stdout, ok.stderr, bad.stdout, bad.stderr):
            assert secret not in text
        for f in files:
            assert secret.encode() not in f.read_bytes(), f
