"""Records into Examples, each in its format (forced, or detected from its source's first record), and what a
set of Examples says about the training it asks for."""

from __future__ import annotations

from training.data.files import DataError
from training.data.formats.base import Example, RecordSource, record_place
from training.data.formats.registry import BY_NAME, KNOWN_FORMATS, data_format, detect_format


def convert_record(record: dict, fmt: str, origin: str, index: int) -> Example:
    """One record in format `fmt` as an Example; DataError names the file and record on problems."""
    data = data_format(fmt)
    missing = [key for key in data.required if key not in record]
    if missing:
        raise DataError(f"{record_place(origin, index)}: missing field(s) {', '.join(missing)} for {fmt} format.")
    return data.convert(record, origin, index)


def examples_from_source(source: RecordSource, forced: str | None) -> list[Example]:
    """All records of one source as Examples, in the forced format or the one detected from its keys."""
    if not source.records:
        return []
    fmt = forced or source.forced_format or detect_format(source.records[0])
    if fmt is None:
        keys = ", ".join(sorted(source.records[0])) or "none"
        raise DataError(f"{source.origin}: unknown dataset format (record keys: {keys}); known formats: "
                        f"{', '.join(KNOWN_FORMATS)} (use --dataset-format to force one).")
    check_source = data_format(fmt).check_source
    if check_source is not None:
        check_source(source)
    return [convert_record(record, fmt, source.origin, i) for i, record in enumerate(source.records)]


def refuse_images(examples: list[Example], model: str) -> None:
    """DataError naming the first image example's file and record when `model` (a text-only model) would get any."""
    images = [e for e in examples if e.images]
    if images:
        first = images[0]
        raise DataError(f"{first.origin}, record {first.index + 1}: an image example ({len(images)} in the dataset), "
                        f"but {model} is a text-only model; use a multimodal model or remove them.")


def task_type(examples: list[Example]) -> str:
    """'text' when every example is plain text or completion, 'preference' for preference pairs, else 'qa'
    (instructions, chat, QA): the task every example's format shares, 'qa' when they differ."""
    tasks = {BY_NAME[e.format].task if e.format in BY_NAME else "qa" for e in examples}
    return tasks.pop() if len(tasks) == 1 else "qa"
