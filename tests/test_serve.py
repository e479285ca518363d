"""``persona-probe serve`` as a service: request schema, bounds, auth, per-request RNG, and a
bounded load test on loopback. All on a tiny random-init Llama (2 layers, hidden 64) with the
embedded SmolLM2 tokenizer, so nothing here runs the real model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from persona_probe.serve import ServerConfig, create_app

KEY = "pp-serve-test-7d2e"
AUTH = {"Authorization": f"Bearer {KEY}"}
N_CTX = 256            # the tiny model's context, so a too-long prompt stays a small body
MAX_PROMPT = 200
BODY_LIMIT = 1 << 20


def _embedded_tokenizer():
    """The SmolLM2 tokenizer: from the dequantized cache when it is built, else the GGUF."""
    from transformers import AutoTokenizer

    from persona_probe.artifacts import sha256_file
    from persona_probe.models import DEFAULT_MODEL, cache_dir, embedded_gguf_path

    gguf = embedded_gguf_path(DEFAULT_MODEL)
    cached = cache_dir() / "models" / f"{DEFAULT_MODEL}-{sha256_file(gguf)[:12]}"
    if (cached / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(cached)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _embedded_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=N_CTX, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    from persona_probe.models import load_subject

    return load_subject(str(tiny_checkpoint), device="cpu")


@pytest.fixture(scope="module")
def client(tiny):
    from fastapi.testclient import TestClient

    app = create_app(tiny, KEY, "tiny", ServerConfig(max_prompt_tokens=MAX_PROMPT))
    with TestClient(app) as c:
        yield c


def _body(**kw):
    return {"model": "tiny", "messages": [{"role": "user", "content": "Rate this: 7?"}],
            "max_tokens": 4, **kw}


def _post(client, body, headers=AUTH, **kw):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/v1/chat/completions", content=content,
                       headers={"Content-Type": "application/json", **headers}, **kw)


def _error(r, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["code"] == status and err["message"]
    return err["message"]


def test_valid_requests_and_response_shape(client):
    r = _post(client, _body(n=3, seed=1, temperature=0.7, top_p=0.9))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["model"] == "tiny"
    assert [c["index"] for c in out["choices"]] == [0, 1, 2]
    assert all(c["finish_reason"] in ("stop", "length") for c in out["choices"])
    assert out["usage"]["completion_tokens"] <= 3 * 4
    lp = _post(client, _body(max_completion_tokens=2, temperature=0, logprobs=True,
                             top_logprobs=5, messages=[
                                 {"role": "developer", "content": "Be terse."},
                                 {"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
               ).json()["choices"][0]["logprobs"]["content"]
    assert len(lp) <= 2 and all(len(e["top_logprobs"]) == 5 for e in lp)
    assert all(e["logprob"] <= 0 for e in lp)
    assert client.get("/v1/models", headers=AUTH).json()["data"][0]["id"] == "tiny"


@pytest.mark.parametrize("body, field", [
    (_body(messages=[{"role": "robot", "content": "hi"}]), "messages.0.role"),
    (_body(messages=[{"role": "user"}]), "messages.0.content"),
    (_body(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
    (_body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]),
     "messages.0.content"),
    (_body(messages=[]), "messages"),
    (_body(messages="hello"), "messages"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    (_body(n="3"), "n"),
    (_body(n=0), "n"),
    (_body(max_tokens=4.5), "max_tokens"),
    (_body(temperature=3), "temperature"),
    (_body(temperature="hot"), "temperature"),
    (_body(top_p=0), "top_p"),
    (_body(logprobs=1), "logprobs"),
    (_body(top_logprobs=21), "top_logprobs"),
    (_body(seed="x"), "seed"),
    (_body(tools=[]), "tools"),
    ([1, 2], "body"),
])
def test_wrong_schema_is_422_naming_the_field(client, body, field):
    r = _post(client, body)
    message = _error(r, 422)
    assert field in message and r.json()["error"]["param"].startswith(field), message


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe\x00", b'{"n": NaN}',
                                 b"[" * 100_000 + b"]" * 100_000])
def test_malformed_json_is_400(client, raw):
    assert "not valid JSON" in _error(_post(client, raw), 400)


@pytest.mark.parametrize("body, words", [
    (_body(n=17), "at most 16"),
    (_body(max_tokens=1025), "at most 1024"),
    (_body(max_completion_tokens=2000), "max_completion_tokens"),
    (_body(messages=[{"role": "user", "content": "word " * 300}]), f"at most {MAX_PROMPT}"),
    (_body(messages=[{"role": "user", "content": "word " * 150}], max_tokens=200),
     "context of 256"),
    (_body(stream=True), "streaming"),
    (_body(stop=["\n"]), "stop"),
    (_body(presence_penalty=0.5), "presence_penalty"),
])
def test_bounds_and_unsupported_features_are_400(client, body, words):
    assert words in _error(_post(client, body), 400)


def test_oversized_body_is_413_before_parsing(client):
    pad = "x" * BODY_LIMIT
    r = _post(client, json.dumps(_body(user=pad)))      # valid JSON, but too large
    assert "over 1048576 bytes" in _error(r, 413)
    assert "413" in client.get("/persona_probe/stats").json()["rejected"]
    junk = b"{" * (BODY_LIMIT + 1)                       # never parsed: would be 400 otherwise
    _error(_post(client, junk), 413)
    assert _post(client, _body()).status_code == 200     # the server is fine afterwards


def test_api_key_checked_in_constant_time(client, monkeypatch):
    import hmac

    import persona_probe.serve as serve

    calls, real = [], hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(serve.hmac, "compare_digest", spy)
    assert _error(_post(client, _body(), headers={}), 401)
    assert _error(_post(client, _body(), headers={"Authorization": f"Bearer {KEY}x"}), 401)
    assert _error(_post(client, b"{not json", headers={"Authorization": "Bearer no"}), 401)
    assert _error(client.get("/v1/models", headers={"Authorization": "Bearer é".encode()}), 401)
    assert _post(client, _body()).status_code == 200
    assert len(calls) == 5 and all(isinstance(a, bytes) for a, _ in calls)


def test_seeded_requests_use_their_own_generator(client):
    body = _body(seed=1234, temperature=1.0, max_tokens=8, n=2)
    state = torch.get_rng_state()
    first = [c["message"]["content"] for c in _post(client, body).json()["choices"]]
    _post(client, _body(temperature=1.0, max_tokens=8))          # unseeded, in between
    torch.manual_seed(99)                                         # global RNG moved on
    again = [c["message"]["content"] for c in _post(client, body).json()["choices"]]
    assert first == again
    other = [c["message"]["content"] for c in
             _post(client, {**body, "seed": 4321}).json()["choices"]]
    assert other != first
    torch.set_rng_state(state)
    _post(client, body)
    _post(client, _body(temperature=1.0, top_p=0.5))
    assert torch.equal(torch.get_rng_state(), state)              # never reseeded or drawn


def test_sampler_matches_generate_greedily(tiny):
    from persona_probe.generation import sample_continuations

    ids = tiny.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    ref = tiny.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                              max_new_tokens=6, do_sample=False, pad_token_id=0,
                              top_p=None, top_k=None,
                              temperature=None)[0, ids.shape[1]:]
    new, logits = sample_continuations(tiny.model, ids[0], 3, 6, temperature=0,
                                       output_logits=True)
    assert new.shape == (3, 6) and len(logits) == 6
    assert all(torch.equal(row, ref) for row in new)
    full = tiny.model(torch.cat([ids[0], ref])[None]).logits[0, ids.shape[1] - 1:-1].float()
    torch.testing.assert_close(torch.stack([lg[0] for lg in logits]), full, rtol=1e-4,
                               atol=1e-4)


# --- a bounded load test on loopback --------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_plan(n: int) -> list[tuple[str, int, dict]]:
    """(kind, expected status, httpx request kwargs) for ``n`` requests, kinds interleaved."""
    json_h = {"Content-Type": "application/json", **AUTH}
    kinds: list[tuple[str, int, dict]] = [
        ("valid", 200, {"json": _body(seed=7)}),
        ("valid_n2_logprobs", 200, {"json": _body(n=2, logprobs=True, top_logprobs=3)}),
        ("valid", 200, {"json": _body(temperature=0)}),
        ("malformed_json", 400, {"content": b'{"model": "tiny", "messages": [', "headers": json_h}),
        ("wrong_schema", 422, {"json": _body(messages=[{"role": "robot", "content": "x"}])}),
        ("wrong_schema", 422, {"json": _body(n="2")}),
        ("oversized_body", 413, {"content": b"x" * (BODY_LIMIT + 1), "headers": json_h}),
        ("oversized_chunked", 413, {"content": "chunked", "headers": json_h}),
        ("n_too_large", 400, {"json": _body(n=64)}),
        ("max_tokens_too_large", 400, {"json": _body(max_tokens=4096)}),
        ("prompt_too_long", 400, {"json": _body(messages=[{"role": "user",
                                                             "content": "word " * 400}])}),
        ("bad_api_key", 401, {"json": _body(), "headers": {"Authorization": "Bearer wrong"}}),
        ("no_api_key", 401, {"json": _body(), "headers": {}}),
    ]
    return [kinds[i % len(kinds)] for i in range(n)]


def test_server_under_load_stays_up_and_answers_every_request(tiny_checkpoint):
    """200 requests at concurrency 16, a mix of valid and bad ones, against the CLI server in a
    subprocess: every answer is the expected 200 or 4xx (no 5xx, no dropped connection), the
    server's own counts agree, and a final valid request succeeds."""
    requests, concurrency = 200, 16
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PP_SERVER_KEY": KEY, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "persona_probe.cli", "serve", "--model", str(tiny_checkpoint),
         "--host", "127.0.0.1", "--port", str(port), "--api-key-env", "PP_SERVER_KEY",
         "--device", "cpu", "--max-prompt-tokens", str(MAX_PROMPT)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            assert time.time() < deadline, "server did not start in 120 s"
            try:
                if httpx.get(f"{url}/v1/models", headers=AUTH, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        plan = _load_plan(requests)
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        with httpx.Client(base_url=url, timeout=30, limits=limits) as http:
            def send(item):
                kind, _, kw = item
                kw = dict(kw)
                kw.setdefault("headers", AUTH)
                if kw.get("content") == "chunked":   # no Content-Length: counted as it arrives
                    kw["content"] = iter([b" " * 65536] * (BODY_LIMIT // 65536 + 2))
                t0 = time.perf_counter()
                try:
                    status = http.post("/v1/chat/completions", **kw).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                return kind, status, time.perf_counter() - t0

            t0 = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                results = list(pool.map(send, plan))
            wall = time.perf_counter() - t0
            final = http.post("/v1/chat/completions", json=_body(), headers=AUTH)
        stats = httpx.get(f"{url}/persona_probe/stats").json()
        alive = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    by_status = Counter(str(s) for _, s, _ in results)
    lat = sorted(t for *_, t in results)
    lat_ok = sorted(t for _, s, t in results if s == 200)
    pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] * 1000  # noqa: E731
    print(f"\nload: {requests} requests, concurrency {concurrency}, {wall:.1f} s "
          f"({requests / wall:.0f} req/s); status counts {dict(sorted(by_status.items()))}; "
          f"latency p50 {pct(lat, .5):.0f} ms, p95 {pct(lat, .95):.0f} ms (all); "
          f"200s p50 {pct(lat_ok, .5):.0f} ms, p95 {pct(lat_ok, .95):.0f} ms")
    wrong = [(k, s) for (k, s, _), (_, want, _) in zip(results, plan) if s != want]
    assert not wrong, Counter(wrong)
    assert all(isinstance(s, int) and s < 500 for _, s, _ in results)
    assert alive and final.status_code == 200, final.text
    expected = Counter(str(want) for _, want, _ in plan)
    assert stats["rejected"] == {k: v for k, v in expected.items() if k != "200"}
    assert stats["chat_completions"] == expected["200"] + 1
    assert wall < 60
