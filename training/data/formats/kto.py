"""The unpaired preference format (KTO): one answer per record with a desirable/undesirable label.

Accepted shapes:
- TRL's: {"prompt", "completion", "label"} (text, or message lists as in conversational prompt-completion);
- LLaMA-Factory's: {"messages" or "conversations", "label" or "kto_tag"}: the last assistant turn is the
  answer, everything before it the prompt.
`label` must be a boolean (or "true"/"false", 1/0). Detection: a record with `label`/`kto_tag` next to a
prompt/completion pair or a conversation is KTO data (the label would otherwise be ignored, so a `label: false`
example would teach exactly what the data says to avoid).
"""

from __future__ import annotations

from training.data.files import DataError
from training.data.formats.base import (
    DataFormat,
    EmptyRecord,
    Example,
    chat_messages,
    is_message,
    parse_tools,
    record_place,
    text_field,
)
from training.data.vision import ImageRefs

NAME = "kto"
TRUE, FALSE = {True, "true", "True", "1", "yes"}, {False, "false", "False", "0", "no"}  # 1 == True, 0 == False


def _label(record: dict, where: str) -> bool:
    value = record.get("label", record.get("kto_tag"))
    if isinstance(value, bool | int | str) and value in TRUE | FALSE:
        return value in TRUE
    raise DataError(f"{where}: 'label' must be true (desirable) or false (undesirable), got {value!r}.")


def _split_conversation(messages: list[dict], where: str) -> tuple[list[dict], list[dict]]:
    """(prompt, answer): the answer is the last assistant message."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None or not (messages[last].get("content") or messages[last].get("tool_calls")):
        raise EmptyRecord(f"{where}: no assistant answer to label.")
    return messages[:last], messages[last:last + 1]


def convert(record: dict, origin: str, index: int) -> Example:
    """One labelled record as an Example: the prompt in `messages` (chat) or `prompt` (text), the answer in
    `chosen`, the label in `label`."""
    where = record_place(origin, index)
    label = _label(record, where)
    if "completion" in record and "prompt" in record:
        prompt, completion = record["prompt"], record["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            if not completion.strip():
                raise EmptyRecord(f"{where}: 'completion' is empty.")
            return Example(NAME, origin, index, prompt=prompt, chosen=completion, label=label)
        prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        completion = [{"role": "assistant", "content": text_field(completion, where, "completion")}] \
            if isinstance(completion, str) else completion
        messages = chat_messages(prompt, where, ImageRefs(None, where)) + chat_messages(
            completion if not is_message(completion) else [completion], where, ImageRefs(None, where))
    else:
        turns = record.get("messages", record.get("conversations"))
        messages = chat_messages(turns, where, ImageRefs(None, where))
        if record.get("system"):
            messages = [{"role": "system", "content": text_field(record["system"], where, "system")}, *messages]
    prompt_messages, answer = _split_conversation(messages, where)
    if not prompt_messages:
        raise DataError(f"{where}: the answer has no prompt before it.")
    return Example(NAME, origin, index, messages=prompt_messages, chosen=answer, label=label,
                   tools=parse_tools(record.get("tools"), where))


FORMAT = DataFormat(NAME, signatures=(("prompt", "completion", "label"), ("messages", "label"),
                                      ("conversations", "label"), ("messages", "kto_tag"),
                                      ("conversations", "kto_tag")),
                    required=(), convert=convert, task="preference")
