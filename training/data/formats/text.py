"""The text format: {"text"} records (and the lines of a .txt file), trained as plain text."""

from __future__ import annotations

from training.data.files import DataError
from training.data.formats.base import DataFormat, Example, RecordSource, record_place, text_field

NAME = "text"


def convert(record: dict, origin: str, index: int) -> Example:
    return Example(NAME, origin, index, completion=text_field(record["text"], record_place(origin, index), "text"))


def check_source(source: RecordSource) -> None:
    """A whole source forced into text format whose records have no 'text' is refused once, not per record."""
    if not source.text_lines and "text" not in source.records[0]:
        raise DataError(f"{source.origin}: text format needs a 'text' field.")


FORMAT = DataFormat(NAME, signatures=(("text",),), required=("text",), convert=convert, task="text",
                    check_source=check_source)
