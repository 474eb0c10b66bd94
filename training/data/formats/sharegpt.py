"""The ShareGPT format: {"conversations": [{"from", "value"}, ...], "system"?, "tools"?}; LLaVA-style `<image>`
placeholders in the text take the record's `images` in order. LLaMA-Factory's tool-call data (glaive) has
`function_call` turns (the assistant's call, JSON {"name", "arguments"}), `observation` turns (the tool's
result) and a `tools` column (a list, or a JSON string): they become real tool calls and tool definitions."""

from __future__ import annotations

from training.data.formats.base import (
    DataFormat,
    Example,
    parse_tools,
    record_place,
    sharegpt_turns,
    text_field,
)
from training.data.vision import ImageRefs

NAME = "sharegpt"


def convert(record: dict, origin: str, index: int) -> Example:
    """One ShareGPT record as a chat Example (tool calls and tool definitions included)."""
    where = record_place(origin, index)
    refs = ImageRefs(record.get("images"), where)
    system = [{"role": "system", "content": text_field(record["system"], where, "system")}] if record.get(
        "system") else []
    messages = system + sharegpt_turns(record["conversations"], where, refs)
    return Example(NAME, origin, index, messages=messages, images=refs.finish(),
                   tools=parse_tools(record.get("tools"), where))


FORMAT = DataFormat(NAME, signatures=(("conversations",),), required=("conversations",), convert=convert)
