"""The Engine interface: what the server (serving/app.py, completions.py) and --chat (serving/terminal.py) call on
a loaded model, whichever engine runs it, and the values they exchange with it.

An engine subclasses `Engine`: `load(cfg, adapters)` builds it from start.sh's configuration (one signature for
every engine), `_activate` switches adapters, `_generate` yields the text of one generation, `compile_format`
turns a response_format into its constraint. Admission (one adapter state at a time, --max-concurrency
slots), the counters /health shows, and chat/text prompts rendered with the tokenizer are shared here.
serving/engines/registry.py names the engines.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from core.adapter import AdapterInfo
from core.errors import UserError
from handlers import handler_for_config
from handlers.chat_templates import fold_tool_turns, normalise_messages
from serving.budget import check_size
from serving.engines.decoding import Piece
from serving.engines.gate import AdapterGate, Turn
from serving.engines.multimodal import processor_prompt
from serving.engines.structured import Grammar, GrammarCompiler, StructuredOutput


class LoadError(UserError, RuntimeError):
    """The model cannot be loaded as asked; the message says why."""


class ServeConfigError(UserError, ValueError):
    """A flag value the user must fix (serving/config.py's checks, and an engine's that need more than the flags:
    the vLLM hand-off). Defined here, below serving.config, which imports the engine names from this package."""


class ServeSettings(Protocol):
    """What engines read of start.sh's configuration: serving.config.ServeConfig, validated and with the install's
    defaults applied (engines do not import serving.config, which takes the engine names from this package)."""

    model_dir: Path | None
    host: str
    port: int
    api_key: str | None
    dtype: str | None
    device: str | None
    quantization: str | None
    cpu_offload: bool
    max_concurrency: int
    batching: str
    gguf_quant: str | None
    threads: int
    chat: bool
    allowed_origins: str | None

    @property
    def model_info(self) -> dict: ...


@dataclass
class GenerationParams:
    """Sampling settings of one request (already validated)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off (vLLM's -1 is mapped to 0 by the protocol)
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # 1: off; over prompt and answer, as vLLM and transformers apply it
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: bool = False
    top_logprobs: int = 0
    special_logprobs: bool = False  # also list special tokens (end-of-text) in logprobs, as legacy completions do
    keep_tokens: set[int] = field(default_factory=set)  # special tokens the caller must see (tool-call markers)
    grammar: Grammar | None = None  # response_format or a forced tool call, compiled by compile_format


@dataclass
class Generation:
    """One request's output so far; `finish_reason` and token counts are set when it ends."""

    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    turn: Turn | None = None  # its slot while admitted: the engine calls turn.share() between tokens


class Engine(ABC):
    """The loaded model and tokenizer with every served adapter attached; `stream` yields the pieces of one
    generation for one route (the base model or an adapter)."""

    name: ClassVar[str]  # as --engine spells it (serving/engines/registry.py)
    supports_logprobs: ClassVar[bool] = True  # also the prompt's (echo with logprobs): `_score`
    supports_embeddings: ClassVar[bool] = False  # `_embed`
    processor = None  # a multimodal model's processor: chat prompts with images are rendered with it

    def __init__(self, model, tokenizer, device: str, adapters: dict[str, AdapterInfo], context_length: int,
                 max_concurrency: int = 1):
        self.model, self.tokenizer, self.device, self.adapters = model, tokenizer, device, adapters
        self.context_length = context_length
        self.base_template = getattr(tokenizer, "chat_template", None)
        self._gate = AdapterGate(max_concurrency, self._activate)
        self._stats_lock = threading.Lock()
        self._grammars: GrammarCompiler | None = None
        self.stats = {"waiting": 0, "active": 0, "completed": 0, "cancelled": 0}

    # --- life cycle --------------------------------------------------------------------------
    @classmethod
    def check_available(cls) -> None:
        """UserError (one sentence, with the way out) when what this engine needs is not installed; start.sh asks
        before anything starts, rather than failing the load behind a running server. Nothing to check by default."""
        return None

    @classmethod
    @abstractmethod
    def load(cls, cfg: ServeSettings, adapters: dict[str, AdapterInfo]) -> Engine:
        """The model of the installed directory `cfg.model_dir` loaded as `cfg` asks, with every adapter
        (key -> adapter) attached; blocking. LoadError when it cannot be."""

    def close(self) -> None:
        """Stop background work; the engine serves no more requests. None by default."""
        return None

    @abstractmethod
    def _activate(self, key: str | None) -> None:
        """Make adapter `key` (None: none, the base model) the one the model computes with; nothing is generating."""

    # --- prompts -----------------------------------------------------------------------------
    def chat_template(self, key: str | None = None) -> str | None:
        """The template of a route: the adapter's own (saved when training used a fallback), else the model's."""
        adapter = self.adapters.get(key) if key else None
        return (adapter.chat_template if adapter and adapter.chat_template else None) or self.base_template

    def chat_prompt(self, messages: list[dict], key: str | None = None, tools: list[dict] | None = None,
                    images: list | None = None, template_kwargs: dict | None = None) -> list[int]:
        """Token ids of a conversation rendered with the route's chat template, ready for the assistant's turn.

        Rendered as training renders it (training/data/tokenize.py): a template without tool support gets earlier tool
        calls as `<tool_call>` text and tool results as user turns if it rejects the tool role; `tools` reach
        templates that use them; `template_kwargs` (chat_template_kwargs: enable_thinking, ...) are variables for
        the template. ValueError when the template rejects the conversation.
        """
        template = self.chat_template(key)
        messages = normalise_messages(messages, isinstance(template, str) and "tool_calls" in template)
        if self.processor is not None:  # multimodal: the processor renders and expands image tokens
            return processor_prompt(self, messages, images or [], template, tools, template_kwargs)
        extra = {**(template_kwargs or {}), **({"tools": tools} if tools and "tools" in (template or "") else {})}
        try:
            text = self._render(messages, template, extra)
        except Exception as exc:  # jinja2 TemplateError / raise_exception() inside the template
            folded = fold_tool_turns(messages)
            if folded == messages:
                raise ValueError(f"The model's chat template rejected these messages: {exc}") from exc
            try:
                text = self._render(folded, template, extra)
            except Exception as again:
                raise ValueError(f"The model's chat template rejected these messages: {again}") from again
        check_size(text, self.context_length)  # before tokenizing: a template may write megabytes
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _render(self, messages: list[dict], template: str | None, extra: dict) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  chat_template=template, **extra)

    def text_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    @property
    def vocab_size(self) -> int:
        """Width of the model's logits (may exceed the tokenizer's length: padded embedding matrices)."""
        return len(self.tokenizer)

    def compile_format(self, output: StructuredOutput) -> Grammar:
        """A constraint (response_format or a forced tool call) compiled for this model's tokenizer; the request
        carries it as GenerationParams.grammar. structured.FormatError (a 400) when the schema cannot be enforced."""
        if self._grammars is None:
            self._grammars = GrammarCompiler(self.tokenizer, self.vocab_size)
        return self._grammars.compile(output)

    # --- generation --------------------------------------------------------------------------
    def _count(self, key: str, delta: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += delta

    def stream(self, prompt_ids: list[int], params: GenerationParams, generation: Generation,
               key: str | None = None) -> Iterator[Piece]:
        """Pieces as they are generated with adapter `key` (None: the base model); waits for its turn first.
        Setting `generation.cancel` stops it, also while it waits."""
        self._count("waiting")
        admitted = False
        try:
            with self._gate.admit(key, generation.cancel) as turn:
                admitted = bool(turn)
                generation.turn = turn
                self._count("waiting", -1)
                if admitted:
                    self._count("active")
                    try:
                        yield from self._generate(prompt_ids, params, generation)
                    finally:
                        self._count("active", -1)
        finally:
            if not admitted and generation.finish_reason is None:
                generation.finish_reason = "cancelled"
            cancelled = generation.finish_reason in (None, "cancelled")
            self._count("cancelled" if cancelled else "completed")

    def _admitted(self, key: str | None, cancel: threading.Event, work):
        """`work()` run in this engine's turn with adapter `key` (a forward pass that is not a generation); None
        when cancelled while waiting."""
        with self._gate.admit(key, cancel) as turn:
            return work() if turn else None

    def score(self, prompt_ids: list[int], top: int, key: str | None, cancel: threading.Event) -> list | None:
        """Each prompt token's decoding.TokenLogprob given the tokens before it (the first: logprob None); None
        when cancelled while waiting. Engines with supports_logprobs implement `_score`."""
        return self._admitted(key, cancel, lambda: self._score(prompt_ids, top))

    def _score(self, prompt_ids: list[int], top: int) -> list:
        raise NotImplementedError(f"--engine {self.name} does not score prompts")

    def embed(self, inputs: list[list[int]], key: str | None, cancel: threading.Event) -> list[list[float]] | None:
        """One embedding per token-id list (supports_embeddings engines); None when cancelled while waiting."""
        return self._admitted(key, cancel, lambda: self._embed(inputs))

    def _embed(self, inputs: list[list[int]]) -> list[list[float]]:
        raise NotImplementedError(f"--engine {self.name} does not embed")

    @abstractmethod
    def _generate(self, prompt_ids, params: GenerationParams, generation: Generation) -> Iterator[Piece]:
        """The pieces of one admitted generation; sets generation.completion_tokens and finish_reason at its end."""


# --- helpers the engines share ------------------------------------------------------------------
def trusts_remote_code(cfg: ServeSettings) -> bool:
    """Whether the install allowed the model's own code (model_info.json's trust_remote_code)."""
    return bool(cfg.model_info.get("trust_remote_code"))


def fallback_template(model_path: Path) -> str | None:
    """The chat template of the model's family for a tokenizer that has none (None when unknown)."""
    try:
        config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return handler_for_config(config).chat_template_fallback


def cut_at_stop(pieces: Iterator[Piece], stops: list[str], generation: Generation) -> Iterator[Piece]:
    """Pass pieces through, ending at the first stop string (never emitted); holds back possible stop prefixes.
    Log-probabilities travel with the first text emitted after their tokens."""
    if not stops:
        yield from (p for p in pieces if p.text or p.logprobs)
        return
    hold = max(len(s) for s in stops) - 1
    buffer, logprobs = "", []
    for piece in pieces:
        buffer += piece.text
        logprobs += piece.logprobs
        hits = [i for i in (buffer.find(s) for s in stops) if i >= 0]
        if hits:
            if buffer[: min(hits)]:
                yield Piece(buffer[: min(hits)], logprobs)
            generation.finish_reason = "stop"
            generation.cancel.set()
            for _ in pieces:  # drain what the worker still produces before it sees the cancel
                pass
            return
        if len(buffer) > hold:
            yield Piece(buffer[: len(buffer) - hold], logprobs)
            buffer, logprobs = buffer[len(buffer) - hold:], []
    if buffer or logprobs:
        yield Piece(buffer, logprobs)
