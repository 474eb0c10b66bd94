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
from training.data.vision import ImageRefs, openai_content

VALID_ROLES = {"system", "user", "assistant", "tool"}


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

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)

    @property
    def image(self):
        """The first image reference (None for a text example)."""
        return self.images[0] if self.images else None


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
