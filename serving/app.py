"""The FastAPI application: OpenAI routes, /health, the chat page, auth, the Host guard, CORS and errors."""

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

from serving import origins
from serving.budget import CHARS_PER_TOKEN_LIMIT, RENDER_SECONDS, BudgetExceeded, ClientGone, bounded
from serving.completions import Job, Prompt, chat_completion, chat_events, text_completion, text_events
from serving.embeddings import EmbeddingRequest, embeddings_response
from serving.engines.base import Engine, GenerationParams
from serving.engines.structured import FormatError, StructuredOutput, structured_output
from serving.images import template_messages
from serving.protocol import ApiError, ChatRequest, CompletionRequest
from serving.router import Route, Router
from serving.tools import forced_call_schema, marker_token_ids

log = logging.getLogger("serve")
PAGE = Path(__file__).resolve().parent / "static" / "index.html"
DEFAULT_CHAT_MAX_TOKENS = 512
DEFAULT_COMPLETION_MAX_TOKENS = 16
RENDER_LIMIT = f"{RENDER_SECONDS:g} s and {CHARS_PER_TOKEN_LIMIT} characters per token of context"
LOCAL_HOST_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}
ROUTES = ("GET /health", "GET /", "GET /v1/models", "GET /v1/models/{id}", "POST /v1/chat/completions",
          "POST /v1/completions", "POST /v1/embeddings")


@dataclass
class ServerState:
    """What the routes need: the engine once loaded (None while loading), or why loading failed."""

    router: Router
    api_key: str | None = None
    loopback: bool = True
    max_body_bytes: int = 1_000_000
    allow_remote_images: bool = False
    allowed_origins: tuple[str, ...] = origins.DEFAULT_ORIGINS
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
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException

    # Trailing slashes are served, not redirected: the guard strips them (a 307 loses a POST's body in some clients).
    app = FastAPI(title="llm-installer", docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if state.loopback and not _host_allowed(request.headers.get("host", "")):
            return _error_response(ApiError(403, "Host header not allowed: this server only answers requests "
                                                 "addressed to localhost.", code="host_not_allowed"))
        path = request.scope["path"]
        if len(path) > 1 and path.endswith("/"):
            request.scope["path"] = path.rstrip("/") or "/"
        origin = request.headers.get("origin")
        cors = {}
        if origin is not None:
            if not origins.origin_allowed(origin, state.allowed_origins, request.headers.get("host", "")):
                return _error_response(ApiError(403, f"Origin {origin[:200]} is not allowed: start the server with "
                                                     "--allowed-origins ORIGIN to let that page call it.",
                                                code="origin_not_allowed"))
            cors = origins.cors_headers(origin)
            if request.method == "OPTIONS" and request.headers.get("access-control-request-method"):
                # A preflight carries no credentials: answered before the key check; the real request needs it.
                return Response(status_code=204, headers=origins.preflight_headers(
                    origin, request.headers.get("access-control-request-headers")))
        response = await _checked(request, call_next)
        response.headers.update(cors)
        return response

    async def _checked(request: Request, call_next):
        if state.api_key and request.url.path != "/health" and \
                not _key_matches(request.headers.get("authorization", ""), state.api_key):
            return _error_response(ApiError(401, "Missing or wrong API key (send Authorization: Bearer KEY).",
                                            code="invalid_api_key", kind="authentication_error"),
                                   headers={"WWW-Authenticate": 'Basic realm="llm-installer"'})
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > state.max_body_bytes:
            return _error_response(ApiError(413, f"Request body over {state.max_body_bytes} bytes.",
                                            code="body_too_large"))
        if request.method == "POST" and not origins.is_json(request.headers.get("content-type")):
            # Forms and no-cors fetches cannot send JSON's type: a page elsewhere cannot make this server generate.
            return _error_response(ApiError(415, "The request body must be sent as Content-Type: application/json.",
                                            code="unsupported_media_type"))
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        if exc.status_code in (404, 405):
            what = "route" if exc.status_code == 404 else "method for this route"
            return _error_response(ApiError(exc.status_code, f"No such {what}: {request.method} {request.url.path}. "
                                                             f"This server serves {', '.join(ROUTES)}.",
                                            code="not_found" if exc.status_code == 404 else "method_not_allowed"))
        return _error_response(ApiError(exc.status_code, str(exc.detail)))

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

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        route = state.router.resolve(model_id or None)
        return next(card for card in state.router.cards(state.created) if card["id"] == route.model_id)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = _validated(ChatRequest, await _json_body(request, state))
        route = state.router.resolve(body.model)
        engine = _ready(state)
        messages, images = template_messages(body.messages, engine, state.allow_remote_images)
        if not any(m["role"] == "user" for m in messages):
            raise ApiError(400, "messages needs at least one user message.", "messages", "no_user_message")
        tools = body.active_tools
        prompt = await _render(request, engine, route, messages, tools, images, body.chat_template_kwargs)
        params = _params(body, engine, len(prompt), body.max_completion_tokens or body.max_tokens,
                         DEFAULT_CHAT_MAX_TOKENS, "messages")
        params.logprobs, params.top_logprobs = body.logprobs, body.top_logprobs or 0
        _check_logprobs(engine, params)
        forced = body.forced_tool if tools else None
        if forced and body.response_format is not None and body.response_format.type != "text":
            raise ApiError(400, "A forced tool call and response_format cannot both constrain one answer: send one.",
                           "response_format", "invalid_value")
        output = (StructuredOutput("tool_call", forced_call_schema(tools, forced, body.parallel_tool_calls))
                  if forced else _structured(body.response_format))
        if output is not None and body.ignore_eos:
            raise ApiError(400, "ignore_eos cannot go with a grammar (response_format or a forced tool call): once "
                                "the JSON is complete, end-of-sequence is the only token it allows.", "ignore_eos",
                           "invalid_value")
        params.grammar = await _compile(engine, output)
        names = None
        if tools:
            names = {tool["function"]["name"] for tool in tools}
            params.keep_tokens = marker_token_ids(engine.tokenizer)
        job = Job(engine, route.key, route.model_id, prompt, params, body.n, names, body.parallel_tool_calls,
                  body.logprobs, forced_tools=forced is not None)
        if body.stream:
            return _event_stream(chat_events(job, body.include_usage))
        return await chat_completion(job, request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = _validated(CompletionRequest, await _json_body(request, state))
        route = state.router.resolve(body.model)
        engine = _ready(state)
        prompts = []
        for text_or_ids in body.prompts:
            ids = await asyncio.to_thread(_prompt_ids, engine, text_or_ids)
            params = _params(body, engine, len(ids), body.max_tokens, DEFAULT_COMPLETION_MAX_TOKENS, "prompt")
            params.logprobs, params.top_logprobs = body.logprobs is not None, body.logprobs or 0
            params.special_logprobs = True  # legacy completions list every token, end-of-text included
            _check_logprobs(engine, params)
            job = Job(engine, route.key, route.model_id, ids, params, body.n)
            scored = None
            if body.echo and params.logprobs:  # lm-eval's loglikelihood: the prompt's own log-probabilities
                scored = await asyncio.to_thread(engine.score, ids, params.top_logprobs, route.key,
                                                 threading.Event())
            echo = (text_or_ids if isinstance(text_or_ids, str) else engine.tokenizer.decode(text_or_ids)) \
                if body.echo else None
            prompts.append(Prompt(job, echo, scored))
        if body.stream:
            return _event_stream(text_events(prompts, body.include_usage))
        return await text_completion(prompts, request)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = _validated(EmbeddingRequest, await _json_body(request, state))
        route = state.router.resolve(body.model)
        engine = _ready(state)
        if not engine.supports_embeddings:
            raise ApiError(400, f"Embeddings are not available with --engine {engine.name}; serve with the default "
                                "--engine transformers for them.", "input", "unsupported_parameter")
        inputs = [await asyncio.to_thread(_prompt_ids, engine, item) for item in body.inputs]
        for ids in inputs:
            if len(ids) > engine.context_length:
                raise ApiError(400, f"An input is {len(ids)} tokens; this model's context is "
                                    f"{engine.context_length}.", "input", "context_length_exceeded")
        vectors = await asyncio.to_thread(engine.embed, inputs, route.key, threading.Event())
        return embeddings_response(route.model_id, vectors, body.encoding_format, sum(map(len, inputs)))

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


def _structured(response_format) -> StructuredOutput | None:
    try:
        return structured_output(response_format)
    except FormatError as exc:
        raise ApiError(400, str(exc), "response_format", "invalid_value") from exc


async def _compile(engine: Engine, output: StructuredOutput | None):
    """The engine's compiled constraint (None without one); a 400 naming the field when it cannot be enforced."""
    if output is None:
        return None
    try:
        return await asyncio.to_thread(engine.compile_format, output)
    except FormatError as exc:
        raise ApiError(400, str(exc), output.param, "unsupported_parameter") from exc


async def _render(request, engine: Engine, route: Route, messages, tools, images, template_kwargs) -> list[int]:
    """The conversation rendered and tokenized within serving/budget.py's bounds; a template that overruns them is
    a 400 naming whose template it is."""
    try:
        return await bounded(lambda: engine.chat_prompt(messages, route.key, tools, images, template_kwargs), request,
                             lane=route.key)
    except ValueError as exc:
        raise ApiError(400, str(exc), "messages", "invalid_messages") from exc
    except BudgetExceeded as exc:
        whose = f"adapter {route.model_id}'s" if route.key else "the model's"
        raise ApiError(400, f"The chat template of {whose} exceeded the rendering budget ({RENDER_LIMIT}): it "
                            "cannot be served as it is.", "model", "template_budget_exceeded") from exc
    except ClientGone as exc:
        raise ApiError(499, "The client closed the request.", code="client_closed") from exc


def _prompt_ids(engine: Engine, prompt: str | list[int]) -> list[int]:
    """Token ids of a prompt given as text or as ids (checked against the vocabulary)."""
    if isinstance(prompt, str):
        return engine.text_prompt(prompt)
    vocabulary = engine.vocab_size
    outside = [token for token in prompt if token >= vocabulary]
    if outside:
        raise ApiError(400, f"The prompt names token {outside[0]}, but the vocabulary has {vocabulary} tokens.",
                       "prompt", "invalid_value")
    return list(prompt)


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
    return GenerationParams(max_tokens=asked if asked is not None else min(default, room),
                            temperature=body.temperature, top_p=body.top_p, top_k=max(body.top_k, 0),
                            min_p=body.min_p, repetition_penalty=body.repetition_penalty, stop=body.stop,
                            seed=body.seed, ignore_eos=body.ignore_eos, presence_penalty=body.presence_penalty,
                            frequency_penalty=body.frequency_penalty, logit_bias=body.logit_bias)
