"""Serve a subject behind an OpenAI-compatible chat-completions API (FastAPI + uvicorn).

Why: a judge model on a GPU box becomes reachable from every laptop running evals, and the HTTP
judge is tested against a real server on loopback instead of mocked HTTP. Implements what judges
use: ``GET /v1/models`` and ``POST /v1/chat/completions`` with ``max_tokens`` (or
``max_completion_tokens``), ``temperature``, ``top_p``, ``n``, ``seed``, ``logprobs`` and
``top_logprobs``; bearer-token auth when an API key is set; and ``GET /persona_probe/stats``
(request counts, for cache tests and monitoring).

As a service it refuses, with an OpenAI-style ``{"error": {...}}`` body and never a 5xx:

* a body over ``max_body_bytes`` — 413, before any of it is parsed (``Content-Length`` is checked
  first; a chunked body is counted as it arrives);
* a wrong or missing bearer key — 401 (compared in constant time);
* a body that is not JSON — 400; one that does not fit the request schema (unknown field or
  role, wrong type, ``n`` < 1, ``temperature`` outside [0, 2], …) — 422, naming the field;
* ``n`` over ``max_n``, ``max_tokens`` over ``max_tokens``, a prompt longer than
  ``max_prompt_tokens`` tokens or one that leaves no room for ``max_tokens`` in the model's
  context, and features it does not implement (streaming, ``stop``, penalties) — 400.

Requests are served one at a time behind one lock. Each samples with its own ``torch.Generator``
(seeded from the request's ``seed``, else fresh), so the global RNG is never reseeded and a seeded
request gives the same reply whatever ran before it.
"""


import dataclasses
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from persona_probe.errors import PromptSetError
from persona_probe.models import Subject

#: Defaults of :class:`ServerConfig` (and of the ``persona-probe serve`` options).
MAX_N = 16
MAX_TOKENS = 1024
MAX_BODY_BYTES = 1 << 20
#: OpenAI's own bound on ``top_logprobs``.
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class ServerConfig:
    """What the server accepts. ``max_prompt_tokens=None`` means the model's context length."""

    api_key: str | None = None          # bearer token every request must carry (None: open)
    model_name: str | None = None       # model id /v1/models lists (None: the subject's spec)
    max_n: int = MAX_N                  # most completions per request ('n')
    max_tokens: int = MAX_TOKENS        # most new tokens per completion a request may ask for
    max_prompt_tokens: int | None = None  # longest prompt in tokens (None: model's context)
    max_body_bytes: int = MAX_BODY_BYTES  # largest request body accepted, in bytes

    def __post_init__(self) -> None:
        for name in ("max_n", "max_tokens", "max_body_bytes", "max_prompt_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"ServerConfig.{name} must be at least 1, got {value}")


# --- the request schema ---------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(_Strict):
    """One part of a message's content given as a list (only text parts are supported)."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_template_message(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(
            p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatCompletionRequest(_Strict):
    """The fields of OpenAI's chat-completions request this server understands; any other field
    is refused (422) rather than silently ignored, since a judge's scores would depend on it."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    seed: int | None = Field(None, ge=-(1 << 63), le=(1 << 64) - 1)
    # Accepted so that ordinary clients are not refused, but only at their neutral values.
    stream: bool | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: str | None = None


class ServerError(Exception):
    """A request refused with an HTTP status and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _error(status: int, message: str, kind: str = "invalid_request_error",
           param: str | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={
        "error": {"message": message, "type": kind, "param": param, "code": status}})


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """One line naming each bad field (at most five), and the first field's path."""
    parts, first = [], None
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        first = first or loc
        if err["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown or unsupported field")
        elif err["type"] == "missing":
            parts.append(f"{loc}: field required")
        else:
            parts.append(f"{loc}: {err['msg']} (got {_short(err.get('input'))})")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else ""), first


def _no_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def parse_request(raw: bytes) -> ChatCompletionRequest:
    """JSON (400 if it is not) into the schema (422 naming the field if it does not fit)."""
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:   # JSONDecodeError, bad UTF-8, NaN, nesting
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ServerError(400, f"the request body is not valid JSON: {reason}") from None
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        message, param = _validation_message(exc)
        raise ServerError(422, f"invalid request: {message}", param) from None


def check_limits(req: ChatCompletionRequest, config: ServerConfig) -> None:
    """The server's bounds and the features it does not implement (400)."""
    if req.stream:
        raise ServerError(400, "streaming is not supported; send 'stream': false", "stream")
    if req.stop:
        raise ServerError(400, "'stop' sequences are not supported", "stop")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise ServerError(400, f"'{name}' is not supported (only 0)", name)
    n = req.n or 1
    if n > config.max_n:
        raise ServerError(400, f"'n' is {n}; this server allows at most {config.max_n} "
                               "(persona-probe serve --max-n)", "n")
    max_tokens = _max_tokens(req)
    if max_tokens > config.max_tokens:
        field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        raise ServerError(400, f"'{field}' is {max_tokens}; this server allows at most "
                               f"{config.max_tokens} (persona-probe serve --max-tokens)", field)


def _max_tokens(req: ChatCompletionRequest) -> int:
    return req.max_completion_tokens or req.max_tokens or 16


def encode_prompt(subject: Subject, req: ChatCompletionRequest, config: ServerConfig,
                  ) -> list[int]:
    """The prompt's token ids; 400 when it exceeds the prompt limit or leaves no room for
    ``max_tokens`` in the model's context."""
    from jinja2 import TemplateError

    tok = subject.tokenizer
    try:
        from persona_probe.chat import render_chat, template_messages

        messages = [m.as_template_message() for m in req.messages]
        prompt = render_chat(tok, template_messages(tok, messages), add_generation_prompt=True)
    except PromptSetError as exc:
        raise ServerError(400, str(exc), "messages") from None
    except TemplateError as exc:
        raise ServerError(400, f"the model's chat template refused these messages: {exc}",
                          "messages") from None
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    limit = config.max_prompt_tokens or subject.n_ctx
    if len(ids) > limit:
        raise ServerError(400, f"the prompt is {len(ids)} tokens; this server allows at most "
                               f"{limit} (persona-probe serve --max-prompt-tokens)", "messages")
    if len(ids) + _max_tokens(req) > subject.n_ctx:
        raise ServerError(400, f"the prompt ({len(ids)} tokens) plus max_tokens "
                               f"({_max_tokens(req)}) exceed the model's context of "
                               f"{subject.n_ctx} tokens", "messages")
    return ids


# --- generation -----------------------------------------------------------------------------

def _token_entry(tok, token_id: int, logprob: float) -> dict[str, Any]:
    text = tok.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _eos_ids(subject: Subject) -> set[int]:
    configured = subject.model.generation_config.eos_token_id
    configured = configured if isinstance(configured, list) else [configured]
    return {i for i in (subject.tokenizer.eos_token_id, *configured) if i is not None}


def request_generator(subject: Subject, seed: int | None) -> torch.Generator:
    """A generator of this request's own: seeded from ``seed``, else from fresh entropy."""
    gen = torch.Generator(device=subject.device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


@torch.no_grad()
def complete(subject: Subject, body: dict[str, Any] | ChatCompletionRequest,
             ids: list[int] | None = None, config: ServerConfig | None = None,
             ) -> dict[str, Any]:
    """One chat completion in the OpenAI response format (``body`` already validated, or a dict
    to validate; ``ids`` the encoded prompt when the caller has it)."""
    from persona_probe.generation import sample_continuations

    config = config or ServerConfig()
    req = body if isinstance(body, ChatCompletionRequest) else \
        ChatCompletionRequest.model_validate(body)
    if ids is None:
        check_limits(req, config)
        ids = encode_prompt(subject, req, config)
    tok = subject.tokenizer
    n = req.n or 1
    temperature = 1.0 if req.temperature is None else req.temperature
    top_logprobs = req.top_logprobs or 0
    want_logprobs = bool(req.logprobs) or top_logprobs > 0
    eos = _eos_ids(subject)
    new, logits = sample_continuations(
        subject.model, torch.tensor(ids, device=subject.device), n, _max_tokens(req),
        temperature=temperature, top_p=req.top_p, generator=request_generator(subject, req.seed),
        eos_token_ids=eos, pad_token_id=tok.pad_token_id or 0, output_logits=want_logprobs)
    choices, completion_tokens = [], 0
    for row in range(n):
        gen = new[row].tolist()
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
                lp = logits[step][row].log_softmax(-1)
                entry = _token_entry(tok, token_id, lp[token_id].item())
                top = lp.topk(top_logprobs) if top_logprobs else None
                entry["top_logprobs"] = [] if top is None else [
                    _token_entry(tok, i, v) for v, i in zip(top.values.tolist(),
                                                            top.indices.tolist())]
                content.append(entry)
            choice["logprobs"] = {"content": content, "refusal": None}
        choices.append(choice)
    width = len(ids)
    return {"id": f"chatcmpl-{secrets.token_hex(8)}", "object": "chat.completion",
            "created": int(time.time()), "model": req.model or config.model_name or subject.spec,
            "choices": choices,
            "usage": {"prompt_tokens": width, "completion_tokens": completion_tokens,
                      "total_tokens": width + completion_tokens}}


# --- the app --------------------------------------------------------------------------------

class BodyLimitMiddleware:
    """Refuse (413) any HTTP request whose body exceeds ``limit`` bytes, before the app sees it.

    A declared ``Content-Length`` over the limit is refused at once, before any of the body is
    read; a body without one (chunked) is buffered up to the limit, refused the moment it goes
    over, and otherwise replayed to the app.
    """

    def __init__(self, app, limit: int, on_refuse=None) -> None:
        self.app, self.limit, self.on_refuse = app, limit, on_refuse

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _error(400, "invalid Content-Length header")(scope, receive, send)
                    return
        if declared is not None and declared > self.limit:
            await self._refuse(scope, receive, send)
            return
        messages, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":   # the client went away
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            messages.append(message)
            if not message.get("more_body", False):
                break
        queue = iter(messages)

        async def replay():
            return next(queue, None) or await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send) -> None:
        # The rest of the body is left unread: uvicorn discards it and the client still gets
        # the 413 (checked up to 64 MiB bodies on loopback), not a reset connection.
        if self.on_refuse is not None:
            self.on_refuse(413)
        await _error(413, f"the request body is over {self.limit} bytes, the most this server "
                          "accepts (persona-probe serve --max-body-bytes)",
                     "request_too_large")(scope, receive, send)


def create_app(subject: Subject, api_key: str | None = None, model_name: str | None = None,
               config: ServerConfig | None = None):
    """The ASGI app. Requests are served one at a time (one model, one lock).

    ``config`` holds the limits (and may hold the key and model name instead of the first two
    arguments, which win when given).
    """
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool

    config = config or ServerConfig()
    if api_key is not None or model_name is not None:
        config = dataclasses.replace(
            config, api_key=api_key if api_key is not None else config.api_key,
            model_name=model_name or config.model_name)
    app = FastAPI(title="persona-probe OpenAI-compatible server")
    name = config.model_name or subject.spec
    expected = f"Bearer {config.api_key}".encode() if config.api_key is not None else None
    lock = threading.Lock()        # the model: one generation at a time
    tok_lock = threading.Lock()    # the tokenizer, so refusals need not wait for a generation
    stats: dict[str, Any] = {"chat_completions": 0, "models": 0, "rejected": {}}

    def authorized(request: Request) -> bool:
        if expected is None:
            return True
        given = request.headers.get("authorization", "").encode("latin-1")  # the raw bytes
        return hmac.compare_digest(given, expected)

    def count_refusal(status: int) -> None:
        stats["rejected"][str(status)] = stats["rejected"].get(str(status), 0) + 1

    def refuse(status: int, message: str, kind: str = "invalid_request_error",
               param: str | None = None):
        count_refusal(status)
        return _error(status, message, kind, param)

    app.add_middleware(BodyLimitMiddleware, limit=config.max_body_bytes,
                       on_refuse=count_refusal)

    @app.exception_handler(ServerError)
    async def server_error(request: Request, exc: ServerError):
        return refuse(exc.status, exc.message, exc.kind, exc.param)

    @app.get("/v1/models")
    async def models(request: Request):
        if not authorized(request):
            return refuse(401, "invalid API key", "authentication_error")
        stats["models"] += 1
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                             "owned_by": "persona-probe"}]}

    @app.post("/v1/chat/completions", openapi_extra={"requestBody": {"content": {
        "application/json": {"schema": ChatCompletionRequest.model_json_schema()}},
        "required": True}})
    async def chat_completions(request: Request):
        if not authorized(request):
            return refuse(401, "invalid API key", "authentication_error")
        req = parse_request(await request.body())
        check_limits(req, config)

        def encode() -> list[int]:
            with tok_lock:
                return encode_prompt(subject, req, config)
        ids = await run_in_threadpool(encode)
        stats["chat_completions"] += 1

        def run() -> dict:
            with lock:
                return complete(subject, req, ids, config)
        return await run_in_threadpool(run)

    @app.get("/persona_probe/stats")
    async def get_stats():
        return {**stats, "rejected": dict(stats["rejected"])}

    return app


def serve(model: str = "smollm2-135m-instruct", host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, device: str = "auto", dtype: str | None = None,
          config: ServerConfig | None = None) -> None:
    """Load ``model`` and serve it until interrupted."""
    import uvicorn

    from persona_probe.models import load_subject

    subject = load_subject(model, device=device, dtype=dtype)
    uvicorn.run(create_app(subject, api_key, model, config), host=host, port=port,
                log_level="warning")
