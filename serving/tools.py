"""Tool calls in a model's output, in the formats chat templates teach: Hermes/Qwen `<tool_call>{json}</tool_call>`,
Mistral `[TOOL_CALLS][{...}]` (and `[TOOL_CALLS]name[ARGS]{...}`), Llama 3.1 `{"name": ..., "parameters": ...}`
(optionally after `<|python_tag|>`). Parsed into OpenAI's `tool_calls`; text that does not parse stays text."""

from __future__ import annotations

import json
import re
import uuid

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
MISTRAL = "[TOOL_CALLS]"
MISTRAL_ARGS = "[ARGS]"
PYTHON_TAG = "<|python_tag|>"
MARKERS = (HERMES_OPEN, MISTRAL, PYTHON_TAG)


def marker_token_ids(tokenizer) -> set[int]:
    """Ids of special tokens that open a tool call: decoding must keep them although they are special."""
    ids = set()
    vocab = tokenizer.get_vocab()
    for marker in (*MARKERS, HERMES_CLOSE, MISTRAL_ARGS):
        if marker in vocab:
            ids.add(vocab[marker])
    return ids


def _call(name: str, arguments) -> dict:
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name,
                                                                                    "arguments": arguments}}


def _as_call(obj, names: set[str] | None) -> dict | None:
    """A {"name", "arguments"|"parameters"} object as a tool call; None when it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if names is not None and obj["name"] not in names:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            json.loads(arguments)
        except ValueError:
            return None
    elif not isinstance(arguments, dict):
        return None
    return _call(obj["name"], arguments)


def _hermes(text: str) -> list[dict] | None:
    calls = []
    for block in re.split(re.escape(HERMES_OPEN), text)[1:]:
        body = block.split(HERMES_CLOSE, 1)[0].strip()
        try:
            call = _as_call(json.loads(body), None)
        except ValueError:
            return None
        if call is None:
            return None
        calls.append(call)
    return calls or None


def _mistral(text: str) -> list[dict] | None:
    calls = []
    for block in text.split(MISTRAL)[1:]:
        block = block.strip()
        if MISTRAL_ARGS in block:  # v11+ tokenizers: [TOOL_CALLS]name[ARGS]{...}
            name, _, arguments = block.partition(MISTRAL_ARGS)
            try:
                call = _as_call({"name": name.strip(), "arguments": json.loads(arguments)}, None)
            except ValueError:
                return None
            if call is None:
                return None
            calls.append(call)
            continue
        try:
            items = json.loads(block)
        except ValueError:
            return None
        for item in items if isinstance(items, list) else [items]:
            call = _as_call(item, None)
            if call is None:
                return None
            calls.append(call)
    return calls or None


def _llama(text: str, names: set[str]) -> list[dict] | None:
    """A bare JSON call (Llama 3.1's JSON tool calling); several may be separated by ';'. Only names offered
    in `tools` count, so an answer that merely is JSON stays an answer."""
    body = text.strip().removeprefix(PYTHON_TAG).strip()
    if not body.startswith("{"):
        return None
    calls = []
    decoder = json.JSONDecoder()
    position = 0
    while position < len(body):
        try:
            obj, end = decoder.raw_decode(body, position)
        except ValueError:
            return None
        call = _as_call(obj, names)
        if call is None:
            return None
        calls.append(call)
        position = end
        rest = body[position:].lstrip()
        if rest.startswith(";"):
            rest = rest[1:].lstrip()
        position = len(body) - len(rest)
    return calls or None


def parse_tool_calls(text: str, tool_names: set[str]) -> tuple[str, list[dict]]:
    """(content, tool_calls) of a finished answer; no tool calls when none parses (the text is then the content)."""
    for marker, parse in ((HERMES_OPEN, _hermes), (MISTRAL, _mistral)):
        index = text.find(marker)
        if index >= 0:
            calls = parse(text[index:])
            if calls:
                return text[:index].strip(), calls
            return text, []
    calls = _llama(text, tool_names)
    return ("", calls) if calls else (text, [])


class ToolCallStream:
    """Streams content while it cannot be a tool call; from the first marker (or an answer opening with JSON)
    holds the rest, which `finish` parses."""

    def __init__(self, tool_names: set[str]):
        self.tool_names = tool_names
        self.held = ""
        self.holding = False
        self.started = False  # some non-space content has been sent

    def feed(self, text: str) -> str:
        """The part of `text` that can be sent as content now."""
        self.held += text
        if self.holding:
            return ""
        if not self.started:
            stripped = self.held.lstrip()
            if not stripped:
                return ""
            if stripped.startswith(("{", PYTHON_TAG)) or any(m.startswith(stripped) for m in MARKERS):
                if stripped.startswith(("{", PYTHON_TAG)):
                    self.holding = True
                return ""
        hits = [i for i in (self.held.find(m) for m in MARKERS) if i >= 0]
        if hits:
            out, self.held = self.held[: min(hits)], self.held[min(hits):]
            self.holding = True
        else:
            keep = _partial_marker_length(self.held)
            out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep:]
        if out.strip():
            self.started = True
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """(content still to send, tool calls) once generation has ended."""
        content, calls = parse_tool_calls(self.held, self.tool_names)
        return content, calls


def _partial_marker_length(text: str) -> int:
    """Length of the longest suffix of `text` that begins a marker (held back until we know)."""
    for length in range(min(len(text), max(len(m) for m in MARKERS) - 1), 0, -1):
        if any(m.startswith(text[-length:]) for m in MARKERS):
            return length
    return 0


# --- forced tool calls (tool_choice "required" or a named function) --------------------------------------
def forced_call_schema(tools: list[dict], name: str, parallel: bool) -> dict:
    """The JSON Schema a forced answer is decoded under: a list of {"name", "arguments"} calls, each naming an
    offered function (`name`, or any for "*") with arguments of that function's schema; one call for a named
    function (as OpenAI answers it) or when parallel_tool_calls is false. The same shape for every model family,
    as vLLM does: the template has already shown the model the tools, and the grammar guarantees a call the
    client can run."""
    options = []
    for tool in tools:
        function = tool["function"]
        if name not in ("*", function["name"]):
            continue
        options.append({"type": "object", "properties": {
            "name": {"const": function["name"]},
            "arguments": function.get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"], "additionalProperties": False})
    items = options[0] if len(options) == 1 else {"anyOf": options}
    schema = {"type": "array", "items": items, "minItems": 1}
    if not parallel or name != "*":
        schema["maxItems"] = 1
    return schema


def parse_forced_calls(text: str) -> tuple[str, list[dict]]:
    """(content, tool_calls) of an answer decoded under forced_call_schema; an answer cut short by max_tokens does
    not parse and stays content (finish_reason "length" says why)."""
    try:
        items = json.loads(text)
    except ValueError:
        return text, []
    calls = [_as_call(item, None) for item in items] if isinstance(items, list) else []
    if not calls or any(call is None for call in calls):
        return text, []
    return "", calls


class ForcedCallStream:
    """The streaming counterpart of parse_forced_calls: holds everything, parses at the end (ToolCallStream's
    interface)."""

    def __init__(self):
        self.held = ""

    def feed(self, text: str) -> str:
        self.held += text
        return ""

    def finish(self) -> tuple[str, list[dict]]:
        return parse_forced_calls(self.held)
