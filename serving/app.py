"""The FastAPI application: OpenAI routes, /health, the chat page, auth, the Host guard and errors."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from pydantic import ValidationError

from .engine import Generation, GenerationParams, ModelEngine
from .protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    chat_chunk,
    chat_response,
    completion_response,
    new_id,
    usage,
)

log = logging.getLogger("serve")
PAGE = Path(__file__).resolve().parent / "static" / "index.html"
DEFAULT_CHAT_MAX_TOKENS = 512
DEFAULT_COMPLETION_MAX_TOKENS = 16
LOCAL_HOST_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


@dataclass
class ServerState:
    """What the routes need: the engine once loaded (None while loading), or why loading failed."""

    model_id: str
    api_key: str | None = None
    loopback: bool = True
    max_body_bytes: int = 1_000_000
    engine: ModelEngine | None = None
    load_error: str | None = None
    details: dict = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))


def _error_response(error: ApiError, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _host_allowed(host_header: str) -> bool:
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host in LOCAL_HOST_NAMES or host.endswith(".localhost")


def _key_matches(header: str, key: str) -> bool:
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.strip().encode(), key.encode())
    if scheme.lower() == "basic":  # browsers: the page asks once, any user name, the key as password
        try:
            password = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), key.encode())
    return False


def create_app(state: ServerState):
    """The ASGI app serving `state`."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="llm-installer", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if state.loopback and not _host_allowed(request.headers.get("host", "")):
            return _error_response(ApiError(403, "Host header not allowed: this server only answers requests "
                                                 "addressed to localhost.", code="host_not_allowed"))
        if state.api_key and request.url.path != "/health" and \
                not _key_matches(request.headers.get("authorization", ""), state.api_key):
            return _error_response(ApiError(401, "Missing or wrong API key (send Authorization: Bearer KEY).",
                                            code="invalid_api_key", kind="authentication_error"),
                                   headers={"WWW-Authenticate": 'Basic realm="llm-installer"'})
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > state.max_body_bytes:
            return _error_response(ApiError(413, f"Request body over {state.max_body_bytes} bytes.",
                                            code="body_too_large"))
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error_response(ApiError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        param = ".".join(str(part) for part in first.get("loc", ())) or None
        return _error_response(ApiError(400, f"Invalid request: {first.get('msg', 'bad value')}.", param))

    @app.exception_handler(Exception)
    async def server_fault(_request, exc: Exception):
        log.exception("Internal error while answering a request")
        return _error_response(ApiError(500, f"Internal server error ({type(exc).__name__}).", kind="server_error"))

    @app.get("/health")
    async def health():
        if state.engine is not None:
            return {"status": "ok", "model": state.model_id, "adapter": state.details.get("adapter"),
                    "requests": dict(state.engine.stats)}
        status = "error" if state.load_error else "loading"
        return JSONResponse({"status": status, "message": state.load_error}, status_code=503)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": _model_cards(state)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = _validated(ChatRequest, await _json_body(request, state))
        engine = _ready(state)
        messages = [m.as_template_message() for m in body.messages]
        if not any(m["role"] == "user" for m in messages):
            raise ApiError(400, "messages needs at least one user message.", "messages", "no_user_message")
        try:
            prompt = await asyncio.to_thread(engine.chat_prompt, messages)
        except ValueError as exc:
            raise ApiError(400, str(exc), "messages", "invalid_messages") from exc
        params = _params(body, engine, len(prompt), body.max_completion_tokens or body.max_tokens,
                         DEFAULT_CHAT_MAX_TOKENS, "messages")
        rid, model = new_id("chatcmpl"), body.model or state.model_id
        generation = Generation(prompt_tokens=len(prompt))
        if body.stream:
            return StreamingResponse(_chat_events(engine, prompt, params, generation, rid, model, body.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text = "".join([piece async for piece in _pieces(engine, prompt, params, generation)])
        return chat_response(rid, model, text, generation.finish_reason or "stop", generation.prompt_tokens,
                             generation.completion_tokens)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = _validated(CompletionRequest, await _json_body(request, state))
        engine = _ready(state)
        prompt = await asyncio.to_thread(engine.text_prompt, body.prompt)
        params = _params(body, engine, len(prompt), body.max_tokens, DEFAULT_COMPLETION_MAX_TOKENS, "prompt")
        rid, model, created = new_id("cmpl"), body.model or state.model_id, int(time.time())
        generation = Generation(prompt_tokens=len(prompt))
        if body.stream:
            return StreamingResponse(_completion_events(engine, prompt, params, generation, rid, model, created,
                                                        body.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text = "".join([piece async for piece in _pieces(engine, prompt, params, generation)])
        return completion_response(rid, model, text, generation.finish_reason or "stop", created,
                                   (generation.prompt_tokens, generation.completion_tokens))

    return app


def _model_cards(state: ServerState) -> list[dict]:
    base = {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "llm-installer",
            "root": state.details.get("source"), "parent": None, "adapter": state.details.get("adapter")}
    cards = [base]
    adapter = state.details.get("adapter")
    if adapter:
        cards.append({"id": f"{state.model_id}:lora", "object": "model", "created": state.created,
                      "owned_by": "llm-installer", "root": adapter["path"], "parent": state.model_id,
                      "adapter": adapter})
    return cards


async def _json_body(request, state: ServerState) -> dict:
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > state.max_body_bytes:
            raise ApiError(413, f"Request body over {state.max_body_bytes} bytes.", code="body_too_large")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"The request body is not valid JSON: {exc}.", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    return data


def _validated(model_class, data: dict):
    try:
        return model_class.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"Invalid '{param}': {message}." if param else f"{message}.", param,
                       "invalid_value") from exc


def _ready(state: ServerState) -> ModelEngine:
    if state.engine is None:
        raise ApiError(503, state.load_error or "The model is still loading; retry when /health says ok.",
                       code="model_loading", kind="server_error")
    return state.engine


def _params(body, engine: ModelEngine, prompt_tokens: int, asked: int | None, default: int, prompt_param: str):
    room = engine.context_length - prompt_tokens
    if room < 1:
        raise ApiError(400, f"The prompt is {prompt_tokens} tokens; this model's context is "
                            f"{engine.context_length}.", prompt_param, "context_length_exceeded")
    if asked is not None and asked > room:
        raise ApiError(400, f"max_tokens {asked} plus the prompt's {prompt_tokens} tokens exceeds the model's "
                            f"context of {engine.context_length} tokens.", "max_tokens", "context_length_exceeded")
    return GenerationParams(max_tokens=asked or min(default, room), temperature=body.temperature, top_p=body.top_p,
                            stop=body.stop, seed=body.seed, ignore_eos=body.ignore_eos)


async def _pieces(engine: ModelEngine, prompt: list[int], params: GenerationParams, generation: Generation):
    """Text pieces from the generation thread; leaving early (client gone) cancels the generation."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def send(item):
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            generation.cancel.set()

    def produce():
        try:
            for piece in engine.stream(prompt, params, generation):
                send(("text", piece))
            send(("end", None))
        except Exception as exc:
            send(("error", exc))

    threading.Thread(target=produce, name="request", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            # Pieces that piled up while the client was being written to go out as one chunk.
            while kind == "text" and not queue.empty():
                next_kind, next_value = queue.get_nowait()
                if next_kind != "text":
                    yield value
                    kind, value = next_kind, next_value
                    break
                value += next_value
            if kind == "end":
                return
            if kind == "error":
                log.error("Generation failed: %s", value)
                raise ApiError(500, f"Generation failed ({type(value).__name__}).", kind="server_error")
            yield value
    finally:
        if generation.finish_reason is None:
            generation.cancel.set()


def _sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False) if not isinstance(data, str) else data}\n\n"


async def _chat_events(engine, prompt, params, generation, rid, model, include_usage):
    created = int(time.time())

    def chunk(delta, finish=None):
        body = chat_chunk(rid, model, created, delta, finish)
        if include_usage:
            body["usage"] = None
        return _sse(body)

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for piece in _pieces(engine, prompt, params, generation):
            yield chunk({"content": piece})
    except ApiError as exc:
        yield _sse(exc.body())
        yield _sse("[DONE]")
        return
    yield chunk({}, generation.finish_reason or "stop")
    if include_usage:
        yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": usage(generation.prompt_tokens, generation.completion_tokens)})
    yield _sse("[DONE]")


async def _completion_events(engine, prompt, params, generation, rid, model, created, include_usage):
    try:
        async for piece in _pieces(engine, prompt, params, generation):
            yield _sse(completion_response(rid, model, piece, None, created))
    except ApiError as exc:
        yield _sse(exc.body())
        yield _sse("[DONE]")
        return
    yield _sse(completion_response(rid, model, "", generation.finish_reason or "stop", created))
    if include_usage:
        final = completion_response(rid, model, "", None, created, (generation.prompt_tokens,
                                                                     generation.completion_tokens))
        final["choices"] = []
        yield _sse(final)
    yield _sse("[DONE]")
