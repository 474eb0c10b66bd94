"""OpenAI's `response_format` (`json_object`, `json_schema`) as constrained decoding: the answer can only be
JSON (matching the schema when one is given).

--engine llama.cpp compiles a GBNF grammar with llama-cpp-python (its own JSON grammar, or one made from the
schema). --engine transformers uses xgrammar's logits processor where xgrammar is installed
(`pip install xgrammar`); without it the request is refused with a 400 that says so.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import threading
from dataclasses import dataclass


class FormatError(ValueError):
    """The response_format cannot be honoured; the message is the 400's, naming what to do."""


@dataclass(frozen=True)
class StructuredOutput:
    """What the answer must be: any JSON object (schema None) or JSON matching `schema`."""

    kind: str  # "json_object" or "json_schema"
    schema: dict | None = None

    @property
    def schema_text(self) -> str | None:
        return None if self.schema is None else json.dumps(self.schema, sort_keys=True)


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


# --- llama.cpp ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _llama_grammar(schema_text: str | None):
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if schema_text is None:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    return LlamaGrammar.from_json_schema(schema_text, verbose=False)


def llama_grammar(output: StructuredOutput):
    """A llama-cpp-python LlamaGrammar for `output` (cached per schema); FormatError for a schema it cannot turn
    into a grammar."""
    try:
        return _llama_grammar(output.schema_text)
    except Exception as exc:  # llama-cpp-python raises ValueError/RuntimeError/KeyError for what it cannot convert
        raise FormatError(f"response_format: this JSON Schema cannot be enforced by llama.cpp's grammar: {exc}.") \
            from exc


# --- transformers (xgrammar) ----------------------------------------------------------------
def xgrammar_available() -> bool:
    return importlib.util.find_spec("xgrammar") is not None


class XGrammarCompiler:
    """xgrammar's compiler for one tokenizer (built once, on the first structured request)."""

    def __init__(self, tokenizer, vocab_size: int):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._compiler = None
        self._lock = threading.Lock()
        self._cache: dict[str | None, object] = {}

    def compile(self, output: StructuredOutput):
        """The compiled grammar for `output` (cached); FormatError when xgrammar is missing or rejects the schema."""
        if not xgrammar_available():
            raise FormatError(f"response_format '{output.kind}' needs constrained decoding: install xgrammar "
                              "(.venv/bin/pip install xgrammar) or serve with --engine llama.cpp.")
        import xgrammar

        key = output.schema_text
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            if self._compiler is None:
                info = xgrammar.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size)
                self._compiler = xgrammar.GrammarCompiler(info)
            try:
                # Compact JSON: with whitespace allowed anywhere, small models were seen emitting only whitespace.
                compiled = self._compiler.compile_json_schema(key or '{"type": "object"}', any_whitespace=False)
            except Exception as exc:  # xgrammar raises RuntimeError with its parser's message
                raise FormatError(f"response_format: this JSON Schema cannot be enforced: {exc}.") from exc
            self._cache[key] = compiled
            return compiled


def xgrammar_processor(compiled):
    """A fresh transformers logits processor for one generate() call (xgrammar's processors are single-use)."""
    from xgrammar.contrib.hf import LogitsProcessor

    return LogitsProcessor(compiled)
