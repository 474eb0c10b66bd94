"""The ShareGPT format: {"conversations": [{"from", "value"}, ...], "system"?}; LLaVA-style `<image>`
placeholders in the text take the record's `images` in order."""

from __future__ import annotations

from training.data.files import DataError
from training.data.formats.base import DataFormat, Example, record_place, text_field
from training.data.vision import ImageRefs, text_with_placeholders

NAME = "sharegpt"
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system",
                  "tool": "tool", "function": "tool", "observation": "tool", "function_call": "assistant"}


def _messages(record: dict, where: str, refs: ImageRefs) -> list[dict]:
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: 'conversations' must be a non-empty list.")
    out = []
    if record.get("system"):
        out.append({"role": "system", "content": text_field(record["system"], where, "system")})
    for number, turn in enumerate(turns, start=1):
        speaker = str(turn.get("from", turn.get("role", ""))).lower() if isinstance(turn, dict) else ""
        if speaker not in SHAREGPT_ROLES:
            raise DataError(f"{where}: turn {number} has unknown speaker '{speaker}'.")
        text = text_field(turn.get("value", turn.get("content")), where, "value")
        out.append({"role": SHAREGPT_ROLES[speaker], "content": text_with_placeholders(text, refs)})
    return out


def convert(record: dict, origin: str, index: int) -> Example:
    where = record_place(origin, index)
    refs = ImageRefs(record.get("images"), where)
    messages = _messages(record, where, refs)
    return Example(NAME, origin, index, messages=messages, images=refs.finish())


FORMAT = DataFormat(NAME, signatures=(("conversations",),), required=("conversations",), convert=convert)
