"""The completion format: {"prompt", "completion"}, trained as text (loss on the completion)."""

from __future__ import annotations

from training.data.formats.base import DataFormat, Example, record_place, text_field

NAME = "completion"


def convert(record: dict, origin: str, index: int) -> Example:
    where = record_place(origin, index)
    return Example(NAME, origin, index, prompt=text_field(record["prompt"], where, "prompt"),
                   completion=text_field(record["completion"], where, "completion"))


FORMAT = DataFormat(NAME, signatures=(("prompt", "completion"),), required=("prompt", "completion"), convert=convert,
                    task="text")
