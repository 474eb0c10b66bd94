"""Constrained decoding: OpenAI's `response_format` (`json_object`, `json_schema`) and forced tool calls
(`tool_choice` "required" or a named function) as a grammar the answer cannot leave.

One library enforces it for every engine: llguidance (a requirement, ~3 MB; the engine behind llama.cpp's and
vLLM's grammars). A JSON Schema is compiled once per tokenizer into an llguidance grammar; each generation gets
its own matcher, which masks the logits before sampling: as a transformers logits processor (torch) or as a
llama-cpp-python logits processor (numpy) over the same Hugging Face token ids, since the llama.cpp engine
tokenizes with the model's own tokenizer. docs/serving.md has the measurements behind the choice.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass

# Compact JSON: with whitespace allowed anywhere, small models were seen emitting only whitespace until max_tokens.
JSON_OPTIONS = {"whitespace_flexible": False}
ANY_OBJECT = {"type": "object"}


class FormatError(ValueError):
    """The constraint cannot be honoured; the message is the 400's, naming what to do."""


@dataclass(frozen=True)
class StructuredOutput:
    """What the answer must be: any JSON object (schema None) or JSON matching `schema`.

    `kind` says who asked: "json_object"/"json_schema" (response_format) or "tool_call" (a forced tool call,
    whose schema serving/tools.py builds from the tools)."""

    kind: str
    schema: dict | None = None

    @property
    def schema_text(self) -> str:
        # Keys in the client's order: properties are written in schema order (sorting would reorder the answer).
        return json.dumps(self.schema if self.schema is not None else ANY_OBJECT)

    @property
    def param(self) -> str:
        """The request field a FormatError points at."""
        return "tool_choice" if self.kind == "tool_call" else "response_format"


def structured_output(response_format) -> StructuredOutput | None:
    """The constraint a request's `response_format` (protocol.ResponseFormat or None) asks for; FormatError when
    a json_schema request lacks its `json_schema.schema` object."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return StructuredOutput("json_object")
    spec = getattr(response_format, "json_schema", None)
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise FormatError("response_format 'json_schema' needs a 'json_schema' object with a 'name' and a 'schema'.")
    if not isinstance(schema, dict):
        raise FormatError("response_format 'json_schema' needs 'json_schema.schema': a JSON Schema object.")
    return StructuredOutput("json_schema", schema)


@dataclass(frozen=True)
class Grammar:
    """A compiled constraint: llguidance's grammar for one tokenizer. `matcher()` starts one generation's state."""

    tokenizer: object  # llguidance.LLTokenizer
    text: str
    vocab_size: int

    def matcher(self):
        import llguidance

        return llguidance.LLMatcher(self.tokenizer, self.text, log_level=0)


class GrammarCompiler:
    """Compiles constraints for one tokenizer (its llguidance view is built once, on the first request: ~1 s)."""

    def __init__(self, tokenizer, vocab_size: int):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._lock = threading.Lock()
        self._llg_tokenizer = None

    def compile(self, output: StructuredOutput) -> Grammar:
        """The grammar for `output`; FormatError naming the request field when the schema cannot be enforced."""
        with self._lock:
            if self._llg_tokenizer is None:
                try:
                    self._llg_tokenizer = _llg_tokenizer(self.tokenizer, self.vocab_size)
                except ValueError as exc:  # llguidance reads fast (Rust) tokenizers only
                    raise FormatError(f"{output.param}: constrained decoding needs a fast tokenizer, and this "
                                      f"model's cannot be read by llguidance ({_first_line(exc)}).") from exc
        text = _grammar_text(output.schema_text)
        if isinstance(text, Exception):
            raise FormatError(f"{output.param}: this JSON Schema cannot be enforced: {_first_line(text)}.")
        import llguidance

        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(text, self._llg_tokenizer)
        if failed:  # (True, [the error]) for what the compiler rejects: an unknown type, a broken pattern
            raise FormatError(f"{output.param}: this JSON Schema cannot be enforced: {_first_line(messages[0])}.")
        return Grammar(self._llg_tokenizer, text, self.vocab_size)


def _llg_tokenizer(tokenizer, vocab_size: int):
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)


@functools.lru_cache(maxsize=256)
def _grammar_text(schema_text: str):
    """llguidance's grammar for a JSON Schema (cached per schema), or the exception explaining why not."""
    import llguidance

    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema_text, overrides=JSON_OPTIONS)
    except (ValueError, TypeError) as exc:
        return exc


def _first_line(message) -> str:
    return str(message).strip().splitlines()[0].rstrip(".") if str(message).strip() else "rejected"


class GrammarGuide:
    """One generation's grammar state: `allowed(tokens)` consumes the tokens sampled since the last call and
    returns the bitmask of the next allowed tokens (numpy int32, one bit per token id)."""

    def __init__(self, grammar: Grammar):
        import llguidance.numpy

        self.matcher = grammar.matcher()
        self.vocab_size = grammar.vocab_size
        self.mask = llguidance.numpy.allocate_token_bitmask(1, grammar.vocab_size)
        self.consumed = 0

    def advance(self, generated: list[int]) -> None:
        """Feed the sampled tokens not yet seen; a token the grammar refused is a bug, not a user error."""
        new = generated[self.consumed:]
        if new and not self.matcher.is_stopped():
            if not self.matcher.consume_tokens([int(t) for t in new]):
                raise RuntimeError(f"constrained decoding lost its grammar: {self.matcher.get_error()}")
        self.consumed = len(generated)

    def fill(self) -> None:
        import llguidance.numpy

        llguidance.numpy.fill_next_token_bitmask(self.matcher, self.mask)

    def allowed(self, width: int):
        """The filled bitmask as one bool per token id, `width` of them (ids the mask does not cover: False)."""
        import numpy as np

        # Bit j of 32-bit word i allows token 32 * i + j; the words are little-endian int32 on every platform
        # llguidance builds for, so the bytes unpack least significant bit first.
        bits = np.unpackbits(self.mask[0].astype("<i4").view(np.uint8), bitorder="little").astype(bool)
        return bits[:width] if bits.size >= width else np.concatenate([bits, np.zeros(width - bits.size, bool)])


def torch_processor(grammar: Grammar, prompt_length: int):
    """A transformers logits processor enforcing `grammar` on one generate() call (batch of one)."""
    import torch
    from transformers import LogitsProcessor

    guide = GrammarGuide(grammar)

    class Constrained(LogitsProcessor):
        # Not llguidance.torch.apply_token_bitmask_inplace: it is torch.compile'd, which needs a C++ compiler at run
        # time on a CPU (and fails when the environment's path holds a space).
        def __call__(self, input_ids, scores):
            guide.advance(input_ids[0, prompt_length:].tolist())
            guide.fill()
            allowed = torch.from_numpy(guide.allowed(scores.shape[-1])).to(scores.device)
            return scores.masked_fill(~allowed, float("-inf"))

    return Constrained()


def numpy_processor(grammar: Grammar, prompt_length: int):
    """A llama-cpp-python logits processor (input_ids, scores) -> scores enforcing `grammar` on one generation."""
    import llguidance.numpy

    guide = GrammarGuide(grammar)

    def constrained(input_ids, scores):
        guide.advance(list(input_ids[prompt_length:]))
        guide.fill()
        llguidance.numpy.apply_token_bitmask_inplace(scores.reshape(1, -1), guide.mask)
        return scores

    return constrained
