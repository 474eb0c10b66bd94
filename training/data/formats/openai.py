"""The openai format: {"messages": [{"role", "content", "tool_calls"?}, ...]}; images as content parts, or taken
from the record's `images` list by parts without a reference."""

from __future__ import annotations

from training.data.formats.base import DataFormat, Example, openai_messages, record_place
from training.data.vision import ImageRefs

NAME = "openai"


def convert(record: dict, origin: str, index: int) -> Example:
    where = record_place(origin, index)
    refs = ImageRefs(record.get("images"), where)
    messages = openai_messages(record["messages"], where, refs)
    return Example(NAME, origin, index, messages=messages, images=refs.finish())


FORMAT = DataFormat(NAME, signatures=(("messages",),), required=("messages",), convert=convert)
