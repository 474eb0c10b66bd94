"""Records into Examples, each in its format (forced, or detected from its source's first record), and what a
set of Examples says about the training it asks for."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.data.files import DataError
from training.data.formats.base import EmptyRecord, Example, RecordSource, is_message, record_place
from training.data.formats.registry import BY_NAME, KNOWN_FORMATS, data_format, detect_format


def convert_record(record: dict, fmt: str, origin: str, index: int) -> Example:
    """One record in format `fmt` as an Example; DataError names the file and record on problems."""
    data = data_format(fmt)
    missing = [key for key in data.required if key not in record]
    if missing:
        raise DataError(f"{record_place(origin, index)}: missing field(s) {', '.join(missing)} for {fmt} format.")
    if data.task != "preference" and any(record.get(key) in (False, "false", "False", 0) for key in
                                          ("label", "kto_tag") if key in record):
        # forcing a chat format on labelled data must not make an undesirable answer a training target
        raise DataError(f"{record_place(origin, index)}: labelled undesirable (label false), so {fmt} format would "
                        "train it as a target; use --dataset-format kto, or drop such records.")
    return data.convert(record, origin, index)


@dataclass
class SourceExamples:
    """One source read: its detected (or forced) format, how many records it held, the examples they gave and
    the records skipped for having nothing to learn from, as (record index, why)."""

    origin: str
    format: str | None
    records: int
    examples: list[Example] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)


def _one_conversation(records: list[dict]) -> list[dict]:
    """A JSON file holding one object ({"conversations": [...]} or {"messages": [...]}) reads as its list of turns:
    when every record is a bare turn, the file is that one conversation."""
    if records and detect_format(records[0]) is None and all(is_message(r) for r in records):
        return [{"conversations": records} if "from" in records[0] else {"messages": records}]
    return records


def read_examples(source: RecordSource, forced: str | None, strict: bool = False) -> SourceExamples:
    """All records of one source as Examples, in the forced format or the one detected from its keys; a record
    with no answer is skipped and counted (a DataError with `strict`)."""
    records = _one_conversation(source.records) if not (forced or source.forced_format) else source.records
    if not records:
        return SourceExamples(source.origin, None, 0)
    fmt = forced or source.forced_format or detect_format(records[0])
    if fmt is None:
        keys = ", ".join(sorted(records[0])) or "none"
        raise DataError(f"{source.origin}: unknown dataset format (record keys: {keys}); known formats: "
                        f"{', '.join(KNOWN_FORMATS)} (use --dataset-format to force one).")
    check_source = data_format(fmt).check_source
    if check_source is not None:
        check_source(source)
    result = SourceExamples(source.origin, fmt, len(records))
    for i, record in enumerate(records):
        try:
            result.examples.append(convert_record(record, fmt, source.origin, i))
        except EmptyRecord as empty:
            if strict:
                raise DataError(f"{empty} (--strict-data)") from empty
            result.skipped.append((i, str(empty).rsplit(": ", 1)[-1].rstrip(".")))
    return result


def examples_from_source(source: RecordSource, forced: str | None) -> list[Example]:
    """All records of one source as Examples, in the forced format or the one detected from its keys."""
    return read_examples(source, forced).examples


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
    tasks = {"qa" if e.is_chat and e.chosen is None else BY_NAME[e.format].task if e.format in BY_NAME else "qa"
             for e in examples}
    return tasks.pop() if len(tasks) == 1 else "qa"
