"""The completion format: {"prompt", "completion"}. As text (TRL's standard prompt-completion) it trains as plain
text with the loss on the completion; as message lists (TRL's conversational prompt-completion) it is a
conversation rendered with the chat template, the prompt's messages context and the completion's trained."""

from __future__ import annotations

from training.data.formats.base import DataFormat, Example, chat_messages, is_message, record_place, text_field
from training.data.vision import ImageRefs

NAME = "completion"


def _conversational(record: dict, origin: str, index: int) -> Example:
    """Prompt and completion as messages (a text side becomes a user prompt or an assistant answer)."""
    where = record_place(origin, index)
    refs = ImageRefs(record.get("images"), where)
    prompt, completion = record["prompt"], record["completion"]
    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    completion = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
    context = chat_messages(prompt, f"{where} 'prompt'", refs)
    answer = chat_messages(completion, f"{where} 'completion'", refs)
    trained_from = len(context)  # the prompt's own assistant turns (few-shot) are context
    return Example(NAME, origin, index, messages=context + answer, images=refs.finish(),
                   context_turns=frozenset(i for i, m in enumerate(context) if m["role"] == "assistant"
                                           and i < trained_from))


def convert(record: dict, origin: str, index: int) -> Example:
    """One prompt/completion record: text, or a conversation when either side is messages."""
    if any(isinstance(record[key], list) or is_message(record[key]) for key in ("prompt", "completion")):
        return _conversational(record, origin, index)
    where = record_place(origin, index)
    return Example(NAME, origin, index, prompt=text_field(record["prompt"], where, "prompt"),
                   completion=text_field(record["completion"], where, "completion"))


FORMAT = DataFormat(NAME, signatures=(("prompt", "completion"),), required=("prompt", "completion"), convert=convert,
                    task="text")
