"""The preference format (TRL's): records with `chosen` and `rejected` answers to one prompt.

Accepted shapes, as TRL's DPOTrainer reads them:
- explicit prompt, text: {"prompt": "...", "chosen": "...", "rejected": "..."}
- explicit prompt, chat: {"prompt": [messages], "chosen": [assistant messages], "rejected": [assistant messages]}
- implicit prompt: {"chosen": ..., "rejected": ...} where both are whole conversations (or texts) sharing a
  prefix; the shared prefix is the prompt (TRL's `extract_prompt`). A record whose `prompt` is text while its
  answers are conversations (or the reverse) is read the same way, as TRL does.
- LLaMA-Factory's and axolotl's: the prompt as messages in `conversations` (ShareGPT's from/value) or
  `messages`, and `chosen`/`rejected` each a single message ({"from", "value"} or {"role", "content"}).

Every problem is one DataError naming the file and record.
"""

from __future__ import annotations

from training.data.files import DataError
from training.data.formats.base import DataFormat, Example, chat_messages, is_message, is_messages, record_place
from training.data.vision import ImageRefs

NAME = "preference"


def _is_messages(value) -> bool:
    return is_messages(value)


def _shared_prefix(chosen, rejected):
    """Length of the common start of two message lists (or strings), TRL-style: a text prompt leaves a
    separating space with the answers."""
    length = 0
    for a, b in zip(chosen, rejected, strict=False):
        if a != b:
            break
        length += 1
    if isinstance(chosen, str) and length and chosen[length - 1] == " ":
        length -= 1
    return length


def _answer_kind(value, key: str, where: str) -> str:
    if isinstance(value, str):
        return "text"
    if _is_messages(value) or is_message(value):
        return "chat"
    if isinstance(value, list) and not value:
        raise DataError(f"{where}: '{key}' is empty.")
    raise DataError(f"{where}: '{key}' must be text or a list of messages with 'role' and 'content', "
                    f"got {type(value).__name__}.")


def _split_prompt(record: dict, where: str):
    """(prompt, chosen, rejected) with the prompt explicit or extracted from the shared start."""
    if "rejected" not in record or record["rejected"] is None:
        raise DataError(f"{where}: missing 'rejected' (a preference record needs 'chosen' and 'rejected').")
    if record.get("chosen") is None:
        raise DataError(f"{where}: missing 'chosen' (a preference record needs 'chosen' and 'rejected').")
    chosen, rejected = (value if not is_message(value) else [value] for value in (record["chosen"], record["rejected"]))
    kind = _answer_kind(chosen, "chosen", where)
    if _answer_kind(rejected, "rejected", where) != kind:
        raise DataError(f"{where}: 'chosen' and 'rejected' must both be text or both be lists of messages.")
    prompt = next((record[key] for key in ("prompt", "conversations", "messages") if record.get(key) is not None),
                  None)
    if kind == "chat" and prompt is not None and record.get("system") and _is_messages(prompt):
        prompt = [{"role": "system", "content": record["system"]}, *prompt]
    if prompt is not None and (_is_messages(prompt) if kind == "chat" else isinstance(prompt, str)):
        return kind, prompt, chosen, rejected
    if prompt is not None and not isinstance(prompt, str | list):
        raise DataError(f"{where}: 'prompt' must be text or a list of messages, got {type(prompt).__name__}.")
    shared = _shared_prefix(chosen, rejected)  # implicit prompt: the conversations' common start
    return kind, chosen[:shared], chosen[shared:], rejected[shared:]


def _check_answers(kind: str, chosen, rejected, where: str) -> None:
    for key, answer in (("chosen", chosen), ("rejected", rejected)):
        if kind == "text" and not answer.strip():
            raise DataError(f"{where}: '{key}' is empty.")
        if kind == "chat":
            if not answer or not any((m.get("content") or m.get("tool_calls")) for m in answer):
                raise DataError(f"{where}: '{key}' has no answer after the prompt.")
            if answer[-1]["role"] != "assistant":
                raise DataError(f"{where}: '{key}' must end with an assistant message, not a "
                                f"'{answer[-1]['role']}' one.")
    if chosen == rejected:
        raise DataError(f"{where}: 'chosen' and 'rejected' are the same answer, so there is no preference to learn.")


def _messages(messages: list, where: str) -> list[dict]:
    """Validated chat messages (the openai format's rules); images are refused: DPO trains text pairs."""
    refs = ImageRefs(None, where)
    converted = chat_messages(messages, where, refs)
    if refs.used:
        raise DataError(f"{where}: has an image; preference pairs are text only.")
    return converted


def convert_preference(record: dict, origin: str, index: int) -> Example:
    """One preference record as an Example (prompt in `messages` or `prompt`, answers in `chosen`/`rejected`)."""
    where = record_place(origin, index)
    kind, prompt, chosen, rejected = _split_prompt(record, where)
    if kind == "text":
        if not isinstance(prompt, str):
            raise DataError(f"{where}: 'prompt' must be text when the answers are text.")
        _check_answers(kind, chosen, rejected, where)
        return Example(NAME, origin, index, prompt=prompt, chosen=chosen, rejected=rejected)
    if not prompt:
        raise DataError(f"{where}: 'chosen' and 'rejected' share no prompt; give a 'prompt', or start both "
                        "conversations with the same messages.")
    prompt, chosen, rejected = (_messages(value, f"{where} '{key}'") if value else [] for key, value in (
        ("prompt", prompt), ("chosen", chosen), ("rejected", rejected)))
    _check_answers(kind, chosen, rejected, where)
    return Example(NAME, origin, index, messages=prompt, chosen=chosen, rejected=rejected)


# TRL's preference format, explicit prompt or implicit
FORMAT = DataFormat(NAME, signatures=(("chosen", "rejected"),), required=("chosen", "rejected"),
                    convert=convert_preference, task="preference")
