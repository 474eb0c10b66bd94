"""Running one API request on the engine: its `n` choices, tool-call parsing, log-probabilities, and the
response body (or the Server-Sent Events of a streamed one). Routes and validation live in app.py."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from serving.engines.base import Engine, Generation, GenerationParams
from serving.engines.decoding import Piece, TokenLogprob
from serving.protocol import (
    SEED_RANGE,
    ApiError,
    chat_choice,
    chat_chunk,
    chat_response,
    completion_choice,
    completion_logprobs,
    completion_response,
    new_id,
    usage,
)
from serving.tools import ForcedCallStream, ToolCallStream, parse_forced_calls, parse_tool_calls

log = logging.getLogger("serve")


@dataclass
class Job:
    """One request, ready to run: the engine, the adapter key of its route, the prompt and the settings."""

    engine: Engine
    key: str | None
    model: str
    prompt: list[int]
    params: GenerationParams
    n: int = 1
    tool_names: set[str] | None = None  # tools offered: parse the output for calls
    parallel_tool_calls: bool = True
    chat_logprobs: bool = False
    forced_tools: bool = False  # decoded under tools.forced_call_schema: the whole answer is the calls

    def params_for(self, index: int) -> GenerationParams:
        """Choice `index`'s settings: with a seed, each choice gets its own (seed + index), so they differ yet
        repeat."""
        if self.params.seed is None or index == 0:
            return self.params
        low, high = SEED_RANGE
        return replace(self.params, seed=(self.params.seed - low + index) % (high - low + 1) + low)


@dataclass
class Choice:
    """What one choice produced."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    generation: Generation | None = None


async def run(job: Job, index: int, generation: Generation) -> AsyncIterator[Piece]:
    """Pieces of choice `index` from the generation thread; leaving early (client gone) cancels it."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    params = job.params_for(index)

    def send(item):
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            generation.cancel.set()

    def produce():
        try:
            for piece in job.engine.stream(job.prompt, params, generation, job.key):
                send(("piece", piece))
            send(("end", None))
        except Exception as exc:
            send(("error", exc))

    threading.Thread(target=produce, name="request", daemon=True).start()
    try:
        while True:
            kind, value = await queue.get()
            # Pieces that piled up while the client was being written to go out as one.
            while kind == "piece" and not queue.empty():
                next_kind, next_value = queue.get_nowait()
                if next_kind != "piece":
                    yield value
                    kind, value = next_kind, next_value
                    break
                value = Piece(value.text + next_value.text, value.logprobs + next_value.logprobs)
            if kind == "end":
                return
            if kind == "error":
                log.error("Generation failed: %s", value)
                raise ApiError(500, f"Generation failed ({type(value).__name__}).", kind="server_error")
            yield value
    finally:
        if generation.finish_reason is None:
            generation.cancel.set()


async def collect(job: Job, request) -> list[Choice]:
    """All choices of a non-streamed request; when its client disconnects, the running choice is cancelled and
    the rest never start."""
    choices: list[Choice] = []
    gone = asyncio.Event()

    async def watch():
        # With the body read, the next ASGI message is the disconnect; waiting for it costs nothing.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone.set()
        for choice in choices:
            choice.generation.cancel.set()

    watcher = asyncio.create_task(watch())
    try:
        for index in range(job.n):
            if gone.is_set():
                break
            choice = Choice(generation=Generation(prompt_tokens=len(job.prompt)))
            choices.append(choice)
            if gone.is_set():  # the watcher may have run between the check and the append
                choice.generation.cancel.set()
            async for piece in run(job, index, choice.generation):
                choice.text += piece.text
                choice.logprobs += piece.logprobs
    finally:
        watcher.cancel()
    return choices


def _completion_tokens(choices: list[Choice]) -> int:
    return sum(c.generation.completion_tokens for c in choices)


# --- chat ----------------------------------------------------------------------------------------
def _tool_calls(job: Job, text: str) -> tuple[str, list[dict]]:
    if job.tool_names is None:
        return text, []
    content, calls = parse_forced_calls(text) if job.forced_tools else parse_tool_calls(text, job.tool_names)
    return content, calls if job.parallel_tool_calls else calls[:1]


async def chat_completion(job: Job, request) -> dict:
    """The chat.completion body of a non-streamed request."""
    choices = await collect(job, request)
    bodies = []
    for index, choice in enumerate(choices):
        content, calls = _tool_calls(job, choice.text)
        finish = "tool_calls" if calls else (choice.generation.finish_reason or "stop")
        logprobs = [e.as_chat() for e in choice.logprobs] if job.chat_logprobs else None
        bodies.append(chat_choice(index, content, finish, calls or None, logprobs))
    return chat_response(new_id("chatcmpl"), job.model, bodies, len(job.prompt), _completion_tokens(choices))


def sse(data) -> str:
    """One Server-Sent Event."""
    return f"data: {json.dumps(data, ensure_ascii=False) if not isinstance(data, str) else data}\n\n"


async def chat_events(job: Job, include_usage: bool) -> AsyncIterator[str]:
    """The chat.completion.chunk events of a streamed request, choice after choice, then usage and [DONE]."""
    rid, created = new_id("chatcmpl"), int(time.time())
    generations = []

    def chunk(delta, index, finish=None, logprobs=None):
        body = chat_chunk(rid, job.model, created, delta, finish, index, logprobs)
        if include_usage:
            body["usage"] = None
        return sse(body)

    try:
        for index in range(job.n):
            generation = Generation(prompt_tokens=len(job.prompt))
            generations.append(generation)
            yield chunk({"role": "assistant", "content": ""}, index)
            tools = None
            if job.tool_names is not None:
                tools = ForcedCallStream() if job.forced_tools else ToolCallStream(job.tool_names)
            async for piece in run(job, index, generation):
                text = tools.feed(piece.text) if tools else piece.text
                logprobs = [e.as_chat() for e in piece.logprobs] if job.chat_logprobs else None
                if text or logprobs:
                    yield chunk({"content": text}, index, logprobs=logprobs)
            finish = generation.finish_reason or "stop"
            if tools:
                rest, calls = tools.finish()
                calls = calls if job.parallel_tool_calls else calls[:1]
                if rest:
                    yield chunk({"content": rest}, index)
                for position, call in enumerate(calls):
                    yield chunk({"tool_calls": [{"index": position, **call}]}, index)
                finish = "tool_calls" if calls else finish
            yield chunk({}, index, finish)
    except ApiError as exc:
        yield sse(exc.body())
        yield sse("[DONE]")
        return
    if include_usage:
        yield sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": job.model,
                   "choices": [], "usage": usage(len(job.prompt), sum(g.completion_tokens for g in generations))})
    yield sse("[DONE]")


# --- text completions ----------------------------------------------------------------------------
@dataclass
class Prompt:
    """One prompt of a /v1/completions request: its job, the text echoed before each answer (echo), and the
    prompt's own log-probabilities (echo with logprobs; the first token has none)."""

    job: Job
    echo: str | None = None
    logprobs: list[TokenLogprob | None] | None = None


def _legacy_logprobs(job: Job, entries: list, offset: int) -> dict | None:
    return completion_logprobs(entries, offset) if job.params.logprobs else None


async def _choices(prompt: Prompt, request) -> list[Choice]:
    if prompt.job.params.max_tokens == 0:  # scoring only: nothing to generate
        return [Choice(generation=Generation(len(prompt.job.prompt), 0, "length")) for _ in range(prompt.job.n)]
    return await collect(prompt.job, request)


async def text_completion(prompts: list[Prompt], request) -> dict:
    """The text_completion body of a non-streamed request: each prompt's `n` choices, in prompt order."""
    bodies, prompt_tokens, completion_tokens = [], 0, 0
    for prompt in prompts:
        job, prefix = prompt.job, prompt.echo or ""
        choices = await _choices(prompt, request)
        prompt_tokens += len(job.prompt)
        completion_tokens += _completion_tokens(choices)
        for choice in choices:
            entries = (prompt.logprobs or []) + choice.logprobs
            bodies.append(completion_choice(len(bodies), prefix + choice.text, choice.generation.finish_reason or "stop",
                                            _legacy_logprobs(job, entries, 0 if prompt.logprobs else len(prefix))))
    return completion_response(new_id("cmpl"), prompts[0].job.model, bodies, int(time.time()),
                               (prompt_tokens, completion_tokens))


async def text_events(prompts: list[Prompt], include_usage: bool) -> AsyncIterator[str]:
    """The text_completion events of a streamed request, prompt after prompt, choice after choice."""
    rid, created, model = new_id("cmpl"), int(time.time()), prompts[0].job.model
    counts, index = [0, 0], 0
    try:
        for prompt in prompts:
            job = prompt.job
            counts[0] += len(job.prompt)
            for choice_index in range(job.n):
                generation = Generation(prompt_tokens=len(job.prompt))
                offset = 0
                if prompt.echo:
                    echoed = _legacy_logprobs(job, prompt.logprobs, 0) if prompt.logprobs else None
                    yield sse(completion_response(rid, model, [completion_choice(index, prompt.echo, None, echoed)],
                                                  created))
                    offset = len(prompt.echo)
                if job.params.max_tokens == 0:
                    generation.finish_reason = "length"
                else:
                    async for piece in run(job, choice_index, generation):
                        logprobs = _legacy_logprobs(job, piece.logprobs, offset)
                        offset += len(piece.text)
                        yield sse(completion_response(rid, model, [completion_choice(index, piece.text, None,
                                                                                     logprobs)], created))
                counts[1] += generation.completion_tokens
                yield sse(completion_response(rid, model, [completion_choice(
                    index, "", generation.finish_reason or "stop")], created))
                index += 1
    except ApiError as exc:
        yield sse(exc.body())
        yield sse("[DONE]")
        return
    if include_usage:
        yield sse(completion_response(rid, model, [], created, (counts[0], counts[1])))
    yield sse("[DONE]")
