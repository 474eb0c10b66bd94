"""The qa format: {"question", "answer", "context"?}; a SQuAD-style answer ({"text": [...]}) gives its first text."""

from __future__ import annotations

from training.data.formats.base import DataFormat, Example, record_place, text_field

NAME = "qa"


def convert(record: dict, origin: str, index: int) -> Example:
    where = record_place(origin, index)
    question = text_field(record["question"], where, "question")
    context = text_field(record.get("context"), where, "context")
    answer = record["answer"]
    if isinstance(answer, dict) and "text" in answer:  # SQuAD-style {"text": [...], "answer_start": [...]}
        answer = answer["text"]
    if isinstance(answer, list):
        answer = answer[0] if answer else ""
    user = f"{context}\n\n{question}" if context.strip() else question
    messages = [{"role": "user", "content": user},
                {"role": "assistant", "content": text_field(answer, where, "answer")}]
    return Example(NAME, origin, index, messages=messages)


FORMAT = DataFormat(NAME, signatures=(("question", "answer"),), required=("question", "answer"), convert=convert)
