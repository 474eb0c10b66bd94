"""The alpaca format: {"instruction", "input"?, "output", "system"?} as a user/assistant exchange."""

from __future__ import annotations

from training.data.formats.base import DataFormat, Example, record_place, text_field

NAME = "alpaca"


def convert(record: dict, origin: str, index: int) -> Example:
    where = record_place(origin, index)
    instruction = text_field(record["instruction"], where, "instruction")
    extra = text_field(record.get("input"), where, "input")
    system = [{"role": "system", "content": text_field(record["system"], where, "system")}] if record.get("system") else []
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages = system + [{"role": "user", "content": user},
                         {"role": "assistant", "content": text_field(record["output"], where, "output")}]
    return Example(NAME, origin, index, messages=messages)


FORMAT = DataFormat(NAME, signatures=(("instruction", "output"),), required=("instruction", "output"), convert=convert)
