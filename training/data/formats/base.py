"""What every dataset format shares: the Example it produces, the DataFormat it declares itself with, and the
helpers its converter uses (text fields, tool calls, OpenAI-style messages).

A format module imports from here (and from training.data.vision for images), never from another format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from training.data.files import DataError
from training.data.vision import ImageRefs, openai_content, text_with_placeholders

VALID_ROLES = {"system", "user", "assistant", "tool"}
# ShareGPT speakers as roles; LLaMA-Factory's (and glaive's) `function_call` turns are the assistant's tool calls
# and `observation` turns the tool results
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system",
                  "tool": "tool", "function": "tool", "observation": "tool", "function_call": "assistant"}


@dataclass
class Example:
    """One training example in canonical form."""

    format: str
    origin: str
    index: int
    messages: list[dict] = field(default_factory=list)
    prompt: str = ""
    completion: str = ""
    images: list = field(default_factory=list)  # references (paths, data: URLs, bytes) in the order of image parts
    # preference pairs: the prompt is in `messages` (chat) or `prompt` (text); the answers are lists of
    # messages (chat) or strings (text)
    chosen: list[dict] | str | None = None
    rejected: list[dict] | str | None = None
    tools: list[dict] | None = None  # tool definitions (OpenAI's shape) the chat template is rendered with
    context_turns: frozenset[int] = frozenset()  # indices of assistant messages that are context, not trained
    label: bool | None = None  # unpaired preference (KTO): True desirable, False undesirable

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)

    @property
    def image(self):
        """The first image reference (None for a text example)."""
        return self.images[0] if self.images else None


class EmptyRecord(DataError):
    """A record with nothing to learn from (no answer): skipped and counted, or refused with --strict-data."""


class RecordSource(Protocol):
    """What reading a source's examples needs of it (training.data.sources.SourceRecords is one)."""

    origin: str
    records: list[dict]
    forced_format: str | None
    text_lines: bool


@dataclass(frozen=True)
class DataFormat:
    """One dataset format, as its module declares it and the registry lists it."""

    name: str  # the --dataset-format choice and Example.format
    # key sets that identify a record as this format (it has every key of one of them), tried in order
    signatures: tuple[tuple[str, ...], ...]
    required: tuple[str, ...]  # keys a record must have once in this format (named when missing)
    convert: Callable[[dict, str, int], Example]  # (record, origin, index) -> Example; DataError on problems
    task: str = "qa"  # what a dataset all of this format trains: 'qa' (instructions, chat), 'text', 'preference'
    # (source) -> None, a DataError when a whole source cannot be in this format (checked before its records)
    check_source: Callable[[RecordSource], None] | None = None


def record_place(origin: str, index: int) -> str:
    """How a message names a record: its file (or dataset) and 1-based number."""
    return f"{origin}, record {index + 1}"


def text_field(value, where: str, key: str) -> str:
    """A text field's value (numbers as text, None as empty); DataError for anything else."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    raise DataError(f"{where}: field '{key}' must be text, got {type(value).__name__}.")


def tool_calls(raw, where: str) -> list[dict]:
    """A message's tool calls in the OpenAI shape, JSON-string arguments decoded where they parse."""
    calls = []
    for call in raw or []:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or "name" not in function:
            raise DataError(f"{where}: every tool call needs a 'name'.")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        calls.append({"type": "function", "function": {"name": function["name"], "arguments": arguments}})
    return calls


def openai_messages(messages, where: str, refs: ImageRefs) -> list[dict]:
    """OpenAI-style messages (role, content, tool_calls) validated and converted; image parts take `refs`."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list.")
    out = []
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or "role" not in message:
            raise DataError(f"{where}: message {number} needs a 'role'.")
        role = message["role"]
        if role not in VALID_ROLES:
            raise DataError(f"{where}: message {number} has unknown role '{role}' "
                            f"(known: {', '.join(sorted(VALID_ROLES))}).")
        converted = {"role": role, "content": openai_content(message.get("content"), refs, where, text_field)}
        if message.get("tool_calls"):
            converted["tool_calls"] = tool_calls(message["tool_calls"], where)
        out.append(converted)
    return out


def parse_tools(value, where: str) -> list[dict] | None:
    """A `tools` column (a list, or a JSON string as LLaMA-Factory stores it) as OpenAI tool definitions; bare
    function schemas ({"name", "parameters"}) are wrapped as {"type": "function", "function": ...}."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: 'tools' is not valid JSON ({exc.msg}).") from exc
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise DataError(f"{where}: 'tools' must be a list of tool definitions.")
    tools = []
    for tool in value:
        function = tool.get("function", tool)
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise DataError(f"{where}: every tool definition needs a 'name'.")
        tools.append({"type": "function", "function": function})
    return tools or None


def call_from_text(text: str, where: str) -> list[dict]:
    """A ShareGPT `function_call` turn's value ({"name", "arguments"} as JSON, or a list of them) as tool calls."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: a function_call turn must hold JSON with 'name' and 'arguments' "
                        f"({exc.msg}).") from exc
    return tool_calls(value if isinstance(value, list) else [value], where)


def is_message(value) -> bool:
    """Whether `value` is one chat message: {"role", "content"} or ShareGPT's {"from", "value"}."""
    return isinstance(value, dict) and ("role" in value or "from" in value)


def is_messages(value) -> bool:
    """Whether `value` is a non-empty list of chat messages (either spelling)."""
    return isinstance(value, list) and bool(value) and all(is_message(m) for m in value)


def sharegpt_turns(turns, where: str, refs: ImageRefs) -> list[dict]:
    """ShareGPT turns ({"from", "value"}) as messages: a `function_call` turn becomes the assistant's tool calls
    (the same OpenAI shape as a `tool_calls` entry, so every source renders a call one way)."""
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: 'conversations' must be a non-empty list.")
    out = []
    for number, turn in enumerate(turns, start=1):
        speaker = str(turn.get("from", turn.get("role", ""))).lower() if isinstance(turn, dict) else ""
        if speaker not in SHAREGPT_ROLES:
            raise DataError(f"{where}: turn {number} has unknown speaker '{speaker}'.")
        text = text_field(turn.get("value", turn.get("content")), where, "value")
        if speaker == "function_call":
            out.append({"role": "assistant", "content": "", "tool_calls": call_from_text(text, where)})
        else:
            out.append({"role": SHAREGPT_ROLES[speaker], "content": text_with_placeholders(text, refs)})
    return out


def chat_messages(value, where: str, refs: ImageRefs) -> list[dict]:
    """Messages in either spelling (OpenAI's role/content or ShareGPT's from/value); one message alone is a list
    of one, as LLaMA-Factory and axolotl write a single chosen or rejected answer."""
    if is_message(value):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "from" in m for m in value):
        return sharegpt_turns(value, where, refs)
    return openai_messages(value, where, refs)


def zero_weight_turns(messages: list) -> frozenset[int]:
    """Indices of the messages OpenAI's fine-tuning format marks `weight: 0` (context, not trained)."""
    return frozenset(i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("weight") in (0, 0.0))
