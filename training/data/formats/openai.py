"""The openai format: {"messages": [{"role", "content", "tool_calls"?, "weight"?}, ...], "tools"?}, as OpenAI's
fine-tuning API defines it: a top-level `tools` list is rendered with the chat template, and an assistant
message with `weight: 0` is context, not trained. Images as content parts, or taken from the record's `images`
list by parts without a reference."""

from __future__ import annotations

from training.data.formats.base import DataFormat, Example, openai_messages, parse_tools, record_place, zero_weight_turns
from training.data.vision import ImageRefs

NAME = "openai"


def convert(record: dict, origin: str, index: int) -> Example:
    """One OpenAI fine-tuning record as a chat Example."""
    where = record_place(origin, index)
    refs = ImageRefs(record.get("images"), where)
    messages = openai_messages(record["messages"], where, refs)
    return Example(NAME, origin, index, messages=messages, images=refs.finish(),
                   tools=parse_tools(record.get("tools"), where),
                   context_turns=zero_weight_turns(record["messages"]))


FORMAT = DataFormat(NAME, signatures=(("messages",),), required=("messages",), convert=convert)
