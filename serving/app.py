"""The FastAPI application: OpenAI routes, /health, the chat page, auth, the Host guard and errors."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Request
from pydantic import ValidationError

from serving.completions import Job, chat_completion, chat_events, text_completion, text_events
from serving.engines.base import Engine, GenerationParams
from serving.engines.structured import FormatError, structured_output
from serving.images import template_messages
from serving.protocol import ApiError, ChatRequest, CompletionRequest
from serving.router import Router
from serving.tools import marker_token_ids

log = logging.getLogger("serve")
PAGE = Path(__file__).resolve().parent / "static" / "index.html"
DEFAULT_CHAT_MAX_TOKENS = 512
DEFAULT_COMPLETION_MAX_TOKENS = 16
LOCAL_HOST_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


@dataclass
class ServerState:
    """What the routes need: the engine once loaded (None while loading), or why loading failed."""

    router: Router
    api_key: str | None = None
    loopback: bool = True
    max_body_bytes: int = 1_000_000
    allow_remote_images: bool = False
    engine: Engine | None = None
    load_error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def model_id(self) -> str:
        return self.router.base.model_id


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
    from fastapi.responses import HTMLResponse, JSONResponse
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
            return {"status": "ok", "model": state.model_id, "default": state.router.default.model_id,
                    "models": list(state.router.routes), "requests": dict(state.engine.stats)}
        status = "error" if state.load_error else "loading"
        return JSONResponse({"status": status, "message": state.load_error}, status_code=503)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": state.router.cards(state.created)}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = _validated(ChatRequest, await _json_body(request, state))
        route = state.router.resolve(body.model)
        engine = _ready(state)
        messages, images = template_messages(body.messages, engine, state.allow_remote_images)
        if not any(m["role"] == "user" for m in messages):
            raise ApiError(400, "messages needs at least one user message.", "messages", "no_user_message")
        tools = body.active_tools
        try:
            prompt = await asyncio.to_thread(engine.chat_prompt, messages, route.key, tools, images)
        except ValueError as exc:
            raise ApiError(400, str(exc), "messages", "invalid_messages") from exc
        params = _params(body, engine, len(prompt), body.max_completion_tokens or body.max_tokens,
                         DEFAULT_CHAT_MAX_TOKENS, "messages")
        params.logprobs, params.top_logprobs = body.logprobs, body.top_logprobs or 0
        _check_logprobs(engine, params)
        params.grammar = await _response_format(engine, body.response_format)
        names = None
        if tools:
            names = {tool["function"]["name"] for tool in tools}
            params.keep_tokens = marker_token_ids(engine.tokenizer)
        job = Job(engine, route.key, route.model_id, prompt, params, body.n, names, body.parallel_tool_calls,
                  body.logprobs)
        if body.stream:
            return _event_stream(chat_events(job, body.include_usage))
        return await chat_completion(job, request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = _validated(CompletionRequest, await _json_body(request, state))
        route = state.router.resolve(body.model)
        engine = _ready(state)
        prompt = await asyncio.to_thread(engine.text_prompt, body.prompt)
        params = _params(body, engine, len(prompt), body.max_tokens, DEFAULT_COMPLETION_MAX_TOKENS, "prompt")
        params.logprobs, params.top_logprobs = body.logprobs is not None, body.logprobs or 0
        _check_logprobs(engine, params)
        job = Job(engine, route.key, route.model_id, prompt, params, body.n)
        echo = body.prompt if body.echo else None
        if body.stream:
            return _event_stream(text_events(job, body.include_usage, echo))
        return await text_completion(job, request, echo)

    return app


def _event_stream(events):
    from fastapi.responses import StreamingResponse

    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


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
    except RecursionError as exc:  # '[' x 100000: deeper than any request needs
        raise ApiError(400, "The request body is nested too deeply.", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    try:
        # JSON may escape half a UTF-16 pair ("\ud800"), which no tokenizer can encode.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(400, "The request contains a lone UTF-16 surrogate (such as \\ud800), which is not text.",
                       code="invalid_json") from exc
    except RecursionError as exc:
        raise ApiError(400, "The request body is nested too deeply.", code="invalid_json") from exc
    return data


def _validated(model_class, data: dict):
    try:
        return model_class.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            raise ApiError(400, f"Unrecognized request argument supplied: {param}.", param,
                           "unrecognized_argument") from exc
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError(400, f"Invalid '{param}': {message}." if param else f"{message}.", param,
                       "invalid_value") from exc


def _ready(state: ServerState) -> Engine:
    if state.engine is None:
        raise ApiError(503, state.load_error or "The model is still loading; retry when /health says ok.",
                       code="model_loading", kind="server_error")
    return state.engine


def _check_logprobs(engine: Engine, params: GenerationParams) -> None:
    if params.logprobs and not engine.supports_logprobs:
        raise ApiError(400, f"logprobs are not available with --engine {engine.name}; serve with the default "
                            "--engine transformers for them.", "logprobs", "unsupported_parameter")


async def _response_format(engine: Engine, response_format):
    """The engine's compiled constraint for response_format json_object/json_schema (None for text); 400 when the
    engine cannot enforce it."""
    try:
        output = structured_output(response_format)
        return None if output is None else await asyncio.to_thread(engine.compile_format, output)
    except FormatError as exc:
        raise ApiError(400, str(exc), "response_format", "unsupported_parameter") from exc


def _params(body, engine: Engine, prompt_tokens: int, asked: int | None, default: int,
            prompt_param: str) -> GenerationParams:
    room = engine.context_length - prompt_tokens
    if room < 1:
        raise ApiError(400, f"The prompt is {prompt_tokens} tokens; this model's context is "
                            f"{engine.context_length}.", prompt_param, "context_length_exceeded")
    if asked is not None and asked > room:
        raise ApiError(400, f"max_tokens {asked} plus the prompt's {prompt_tokens} tokens exceeds the model's "
                            f"context of {engine.context_length} tokens.", "max_tokens", "context_length_exceeded")
    vocabulary = len(engine.tokenizer)
    outside = [token for token in body.logit_bias if token >= vocabulary]
    if outside:
        raise ApiError(400, f"logit_bias names token {outside[0]}, but the vocabulary has {vocabulary} tokens.",
                       "logit_bias", "invalid_value")
    return GenerationParams(max_tokens=asked or min(default, room), temperature=body.temperature, top_p=body.top_p,
                            stop=body.stop, seed=body.seed, ignore_eos=body.ignore_eos,
                            presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                            logit_bias=body.logit_bias)
