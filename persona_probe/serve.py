"""Serve a subject behind an OpenAI-compatible chat-completions API (FastAPI + uvicorn).

Why: a judge model on a GPU box becomes reachable from every laptop running evals, and the HTTP
judge is tested against a real server on loopback instead of mocked HTTP. Implements what judges
use: ``GET /v1/models`` and ``POST /v1/chat/completions`` with ``max_tokens``, ``temperature``,
``top_p``, ``n``, ``seed``, ``logprobs`` and ``top_logprobs``; bearer-token auth when an API key
is set; and ``GET /persona_probe/stats`` (request counts, for cache tests and monitoring).
"""


import secrets
import threading
import time
from typing import Any

import torch

from persona_probe.models import Subject


def _error(status: int, message: str, kind: str):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "code": status}})


def _token_entry(tok, token_id: int, logprob: float) -> dict[str, Any]:
    text = tok.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


@torch.no_grad()
def complete(subject: Subject, body: dict[str, Any]) -> dict[str, Any]:
    """One chat completion in the OpenAI response format."""
    tok = subject.tokenizer
    messages = body["messages"]
    max_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 16)
    temperature = float(body.get("temperature", 1.0) if body.get("temperature") is not None
                        else 1.0)
    n = int(body.get("n") or 1)
    top_logprobs = int(body.get("top_logprobs") or 0)
    want_logprobs = bool(body.get("logprobs")) or top_logprobs > 0
    if body.get("seed") is not None:
        torch.manual_seed(int(body["seed"]))
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = ids.to(subject.device).repeat(n, 1)
    sample = temperature > 0
    out = subject.model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
        do_sample=sample, temperature=temperature if sample else None,
        top_p=float(body["top_p"]) if sample and body.get("top_p") is not None else None,
        top_k=None, pad_token_id=tok.pad_token_id, output_logits=want_logprobs,
        return_dict_in_generate=True)
    width = ids.shape[1]
    eos = {tok.eos_token_id, *(subject.model.generation_config.eos_token_id or [])} \
        if isinstance(subject.model.generation_config.eos_token_id, list) \
        else {tok.eos_token_id, subject.model.generation_config.eos_token_id}
    choices, completion_tokens = [], 0
    for row in range(n):
        gen = out.sequences[row, width:].tolist()
        stop = next((i for i, t in enumerate(gen) if t in eos), None)
        finish = "stop" if stop is not None else "length"
        gen = gen[:stop] if stop is not None else gen
        completion_tokens += len(gen)
        choice: dict[str, Any] = {
            "index": row, "finish_reason": finish, "logprobs": None,
            "message": {"role": "assistant", "content": tok.decode(gen, skip_special_tokens=True)}}
        if want_logprobs:
            content = []
            for step, token_id in enumerate(gen):
                lp = out.logits[step][row].float().log_softmax(-1)
                entry = _token_entry(tok, token_id, lp[token_id].item())
                top = lp.topk(top_logprobs) if top_logprobs else None
                entry["top_logprobs"] = [] if top is None else [
                    _token_entry(tok, i, v) for v, i in zip(top.values.tolist(),
                                                            top.indices.tolist())]
                content.append(entry)
            choice["logprobs"] = {"content": content, "refusal": None}
        choices.append(choice)
    return {"id": f"chatcmpl-{secrets.token_hex(8)}", "object": "chat.completion",
            "created": int(time.time()), "model": body.get("model", subject.spec),
            "choices": choices,
            "usage": {"prompt_tokens": width, "completion_tokens": completion_tokens,
                      "total_tokens": width + completion_tokens}}


def create_app(subject: Subject, api_key: str | None = None, model_name: str | None = None):
    """The ASGI app. Requests are served one at a time (one model, one lock)."""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool

    app = FastAPI(title="persona-probe OpenAI-compatible server")
    name = model_name or subject.spec
    lock = threading.Lock()
    stats = {"chat_completions": 0, "models": 0}

    def authorized(request: Request) -> bool:
        return api_key is None or request.headers.get("authorization") == f"Bearer {api_key}"

    @app.get("/v1/models")
    async def models(request: Request):
        if not authorized(request):
            return _error(401, "invalid API key", "invalid_request_error")
        stats["models"] += 1
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                             "owned_by": "persona-probe"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        if not authorized(request):
            return _error(401, "invalid API key", "invalid_request_error")
        stats["chat_completions"] += 1
        body = await request.json()
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "'messages' must be a non-empty list", "invalid_request_error")
        if body.get("stream"):
            return _error(400, "streaming is not supported", "invalid_request_error")

        def run() -> dict:
            with lock:
                return complete(subject, body)
        return await run_in_threadpool(run)

    @app.get("/persona_probe/stats")
    async def get_stats():
        return dict(stats)

    return app


def serve(model: str = "smollm2-135m-instruct", host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, device: str = "auto", dtype: str | None = None) -> None:
    """Load ``model`` and serve it until interrupted."""
    import uvicorn

    from persona_probe.models import load_subject

    subject = load_subject(model, device=device, dtype=dtype)
    uvicorn.run(create_app(subject, api_key, model), host=host, port=port, log_level="warning")
