"""OpenAI request bodies (validated with pydantic) and response objects."""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ROLES = ("system", "developer", "user", "assistant", "tool")


class ApiError(Exception):
    """An error returned in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal[ROLES]  # type: ignore[valid-type]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None

    def as_template_message(self) -> dict:
        """The dict a chat template expects (text parts joined; developer treated as system)."""
        if isinstance(self.content, list):
            texts = [p.text or "" for p in self.content if p.type == "text"]
            if len(texts) != len(self.content):
                raise ApiError(400, "Only text content parts are supported by this model.", "messages",
                               "unsupported_content")
            content = "".join(texts)
        else:
            content = self.content or ""
        message = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.tool_calls:
            message["tool_calls"] = [_template_tool_call(call) for call in self.tool_calls]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        if self.name:
            message["name"] = self.name
        return message


def _template_tool_call(call: dict) -> dict:
    """An OpenAI tool call as chat templates expect it: `arguments` as an object, not a JSON string."""
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ApiError(400, "Each tool call in messages needs function.name.", "messages", "invalid_value")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as exc:
            raise ApiError(400, f"The arguments of tool call {function['name']!r} are not valid JSON.", "messages",
                           "invalid_value") from exc
    return {**call, "type": "function", "function": {"name": function["name"], "arguments": arguments}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    include_obfuscation: bool | None = None  # OpenAI pads chunks against length side channels; nothing to pad here


# OpenAI parameters this server does not implement: a request that sets them is a 400 saying so, never a 200
# that quietly ignores them. (Parameters nobody has heard of are a 400 too: extra="forbid".)
UNSUPPORTED = {
    "audio": "audio output is not supported by this server",
    "modalities": "only text output is supported by this server",
    "prediction": "predicted outputs are not supported by this server",
    "web_search_options": "web search is not supported by this server",
    "functions": "'functions' is deprecated: send 'tools' instead",
    "function_call": "'function_call' is deprecated: send 'tool_choice' instead",
    "reasoning_effort": "this server's models have no reasoning-effort control",
    "suffix": "suffix (insertion) is not supported by this server",
}
MAX_CHOICES = 16  # n above this is refused: each choice is a full generation on this server
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed accepts


class SamplingRequest(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1)  # vLLM/Ollama: keep the k most likely tokens; 0 and -1 (vLLM's "off") keep all
    min_p: float = Field(0.0, ge=0, le=1)  # vLLM/Ollama: drop tokens below min_p x the top token's probability
    repetition_penalty: float = Field(1.0, gt=0, le=10)  # vLLM/transformers: >1 discourages repeating tokens
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(default_factory=dict)
    # OpenAI fields that do not change the answer: accepted, and docs/serving.md says what each does here.
    user: str | None = None  # an end-user label: only logged by OpenAI; not recorded here
    safety_identifier: str | None = None  # user's replacement in the newer API; not recorded here
    prompt_cache_key: str | None = None  # a cache-routing hint; this server keeps no prompt cache between requests
    metadata: dict[str, str] | None = None  # labels for stored completions; nothing is stored here
    store: bool | None = None  # OpenAI may store the completion for evals; this server never stores anything
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None  # one tier here
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens even past end-of-sequence

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data):
        if isinstance(data, dict):
            for name, why in UNSUPPORTED.items():
                if data.get(name) is not None:
                    raise ApiError(400, f"'{name}': {why}.", name, "unsupported_parameter")
        return data

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value):
        if value is None:
            return {}
        bias = {}
        for token, amount in value.items():
            if not token.isdigit():
                raise ValueError(f"keys are token ids, not {token!r}")
            if not -100 <= amount <= 100:
                raise ValueError("values must be between -100 and 100")
            bias[int(token)] = amount
        return bias

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class FunctionSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    name: str


class ToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]


RESERVED_TEMPLATE_KWARGS = ("messages", "tools", "add_generation_prompt", "tokenize", "chat_template",
                            "continue_final_message", "return_dict", "documents")


class ChatRequest(SamplingRequest):
    messages: list[Message] = Field(min_length=1)
    verbosity: Literal["low", "medium", "high"] | None = None  # a hint for OpenAI's reasoning models; none here
    chat_template_kwargs: dict | None = None  # vLLM's extension: extra variables for the chat template
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if self.top_logprobs and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true.", "top_logprobs", "invalid_value")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise ApiError(400, "tool_choice needs tools.", "tool_choice", "invalid_value")
        if isinstance(self.tool_choice, ToolChoice) and self.tool_choice.function.name not in \
                {tool.function.name for tool in self.tools}:
            raise ApiError(400, f"tool_choice names the function '{self.tool_choice.function.name}', which is not "
                                "in tools.", "tool_choice", "invalid_value")
        reserved = [key for key in self.chat_template_kwargs or {} if key in RESERVED_TEMPLATE_KWARGS]
        if reserved:
            raise ApiError(400, f"chat_template_kwargs cannot set '{reserved[0]}': the server sets it from the "
                                "request.", "chat_template_kwargs", "invalid_value")
        return self

    @property
    def forced_tool(self) -> str | None:
        """The function a named tool_choice forces ("*" for "required": any of the tools); None otherwise."""
        if isinstance(self.tool_choice, ToolChoice):
            return self.tool_choice.function.name
        return "*" if self.tool_choice == "required" else None

    @property
    def active_tools(self) -> list[dict] | None:
        """The tools as the chat template receives them; None when there are none or tool_choice is 'none'."""
        if not self.tools or self.tool_choice == "none":
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools]


MAX_PROMPTS = 256  # prompts in one /v1/completions request (lm-eval sends its batch as one list)


class CompletionRequest(SamplingRequest):
    # A string, a list of strings, token ids, or a list of token-id lists (what lm-evaluation-harness sends).
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)  # 0 with echo: score the prompt only (loglikelihood)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = Field(None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        prompts = [value] if isinstance(value, str) or (value and isinstance(value[0], int)) else value
        if not prompts:
            raise ValueError("prompt is empty")
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts in one request")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("a prompt is empty")
        if any(t < 0 for p in prompts if not isinstance(p, str) for t in p):
            raise ValueError("token ids cannot be negative")
        return prompts

    @model_validator(mode="after")
    def _consistent(self):
        if self.best_of is not None and self.best_of != self.n:
            raise ApiError(400, "best_of other than n is not supported by this server (it would rank candidates "
                                "it generated but did not return).", "best_of", "unsupported_parameter")
        if self.max_tokens == 0 and not self.echo:
            raise ApiError(400, "max_tokens 0 generates nothing: send echo: true to score the prompt.", "max_tokens",
                           "invalid_value")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts, always as a list (the validator normalised them)."""
        return self.prompt  # type: ignore[return-value]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_choice(index: int, text: str, finish: str, tool_calls: list[dict] | None = None,
                logprobs: list[dict] | None = None) -> dict:
    """One entry of a chat completion's `choices`."""
    message = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": None if logprobs is None else {"content": logprobs},
            "finish_reason": finish}


def chat_response(rid: str, model: str, choices: list[dict], prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}


def chat_chunk(rid: str, model: str, created: int, delta: dict, finish: str | None = None, index: int = 0,
               logprobs: list[dict] | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta,
                         "logprobs": None if logprobs is None else {"content": logprobs}, "finish_reason": finish}]}


def completion_logprobs(entries: list, offset: int) -> dict:
    """The legacy completions' logprobs object for TokenLogprob entries; `offset`: text length before them."""
    text_offset = []
    for entry in entries:
        text_offset.append(offset)
        offset += len(entry.token)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [dict(e.top) if e.logprob is not None else None for e in entries],
            "text_offset": text_offset}


def completion_choice(index: int, text: str, finish: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def completion_response(rid: str, model: str, choices: list[dict], created: int,
                        counts: tuple[int, int] | None = None) -> dict:
    body = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if counts is not None:
        body["usage"] = usage(*counts)
    return body
