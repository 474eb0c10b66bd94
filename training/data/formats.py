"""Dataset formats: detected from the keys of each file's records, converted to one shape.

A chat-like record (alpaca, ShareGPT, OpenAI messages, QA) becomes a list of messages
rendered later with the model's chat template; completion and text records become a
prompt/completion pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from training.config import FORMATS
from training.data.sources import DataError, SourceRecords
from training.data.vision import ImageRefs, caption_messages, openai_content, text_with_placeholders

KNOWN_FORMATS = FORMATS  # defined once, with the --dataset-format choices
TEXT_TASK_FORMATS = {"text", "completion"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system",
                  "tool": "tool", "function": "tool", "observation": "tool", "function_call": "assistant"}
VALID_ROLES = {"system", "user", "assistant", "tool"}
IMAGE_KEYS = ("image", "images", "image_path", "image_url")

# (format, keys that must all be present) in detection order.
SIGNATURES = (
    ("preference", ("chosen", "rejected")),  # TRL's preference format, explicit prompt or implicit
    ("openai", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("vision", ("image",)),
    ("vision", ("images",)),
    ("alpaca", ("instruction", "output")),
    ("qa", ("question", "answer")),
    ("completion", ("prompt", "completion")),
    ("text", ("text",)),
)
REQUIRED = {"openai": ("messages",), "sharegpt": ("conversations",), "alpaca": ("instruction", "output"),
            "qa": ("question", "answer"), "completion": ("prompt", "completion"), "text": ("text",), "vision": (),
            "preference": ("chosen", "rejected")}


@dataclass
class Example:
    """One training example in canonical form."""

    format: str
    origin: str
    index: int
    messages: list[dict] = field(default_factory=list)
    prompt: str = ""
    completion: str = ""
    images: list = field(default_factory=list)  # references (paths, data: URLs, bytes) in the order of image parts
    # preference pairs: the prompt is in `messages` (chat) or `prompt` (text); the answers are lists of
    # messages (chat) or strings (text)
    chosen: list[dict] | str | None = None
    rejected: list[dict] | str | None = None

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)

    @property
    def image(self):
        """The first image reference (None for a text example)."""
        return self.images[0] if self.images else None


def detect_format(record: dict) -> str | None:
    """The format a record's keys say it is in (None if unknown)."""
    keys = set(record)
    for name, needed in SIGNATURES:
        if keys.issuperset(needed):
            return name
    return None


def _text(value, where: str, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    raise DataError(f"{where}: field '{key}' must be text, got {type(value).__name__}.")


def _tool_calls(raw, where: str) -> list[dict]:
    calls = []
    for call in raw or []:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or "name" not in function:
            raise DataError(f"{where}: every tool call needs a 'name'.")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        calls.append({"type": "function", "function": {"name": function["name"], "arguments": arguments}})
    return calls


def _openai(record: dict, where: str, refs: ImageRefs) -> list[dict]:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list.")
    out = []
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or "role" not in message:
            raise DataError(f"{where}: message {number} needs a 'role'.")
        role = message["role"]
        if role not in VALID_ROLES:
            raise DataError(f"{where}: message {number} has unknown role '{role}' "
                            f"(known: {', '.join(sorted(VALID_ROLES))}).")
        converted = {"role": role, "content": openai_content(message.get("content"), refs, where, _text)}
        if message.get("tool_calls"):
            converted["tool_calls"] = _tool_calls(message["tool_calls"], where)
        out.append(converted)
    return out


def _sharegpt(record: dict, where: str, refs: ImageRefs) -> list[dict]:
    turns = record["conversations"]
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: 'conversations' must be a non-empty list.")
    out = []
    if record.get("system"):
        out.append({"role": "system", "content": _text(record["system"], where, "system")})
    for number, turn in enumerate(turns, start=1):
        speaker = str(turn.get("from", turn.get("role", ""))).lower() if isinstance(turn, dict) else ""
        if speaker not in SHAREGPT_ROLES:
            raise DataError(f"{where}: turn {number} has unknown speaker '{speaker}'.")
        text = _text(turn.get("value", turn.get("content")), where, "value")
        out.append({"role": SHAREGPT_ROLES[speaker], "content": text_with_placeholders(text, refs)})
    return out


def _alpaca(record: dict, where: str, _refs: ImageRefs) -> list[dict]:
    instruction = _text(record["instruction"], where, "instruction")
    extra = _text(record.get("input"), where, "input")
    messages = [{"role": "system", "content": _text(record["system"], where, "system")}] if record.get("system") else []
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return messages + [{"role": "user", "content": user},
                       {"role": "assistant", "content": _text(record["output"], where, "output")}]


def _qa(record: dict, where: str, _refs: ImageRefs) -> list[dict]:
    question = _text(record["question"], where, "question")
    context = _text(record.get("context"), where, "context")
    answer = record["answer"]
    if isinstance(answer, dict) and "text" in answer:  # SQuAD-style {"text": [...], "answer_start": [...]}
        answer = answer["text"]
    if isinstance(answer, list):
        answer = answer[0] if answer else ""
    user = f"{context}\n\n{question}" if context.strip() else question
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(answer, where, "answer")}]


CHAT_CONVERTERS = {"openai": _openai, "sharegpt": _sharegpt, "alpaca": _alpaca, "qa": _qa}


def convert_record(record: dict, fmt: str, origin: str, index: int) -> Example:
    """One record in format `fmt` as an Example; DataError names the file and record on problems."""
    where = f"{origin}, record {index + 1}"
    missing = [key for key in REQUIRED[fmt] if key not in record]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)} for {fmt} format.")
    if fmt in CHAT_CONVERTERS:
        refs = ImageRefs(record.get("images") if fmt in ("openai", "sharegpt") else None, where)
        messages = CHAT_CONVERTERS[fmt](record, where, refs)
        return Example(fmt, origin, index, messages=messages, images=refs.finish())
    if fmt == "preference":
        from training.data.preference import convert_preference

        return convert_preference(record, origin, index)
    if fmt == "completion":
        return Example(fmt, origin, index, prompt=_text(record["prompt"], where, "prompt"),
                       completion=_text(record["completion"], where, "completion"))
    if fmt == "text":
        return Example(fmt, origin, index, completion=_text(record["text"], where, "text"))
    image = next((record[k] for k in IMAGE_KEYS if record.get(k) is not None), None)
    if isinstance(image, list):
        if len(image) != 1:
            raise DataError(f"{where}: a caption record takes one image, not {len(image)} (use messages for more).")
        image = image[0]
    if image is None:
        raise DataError(f"{where}: the record has no image (fields {', '.join(IMAGE_KEYS)}).")
    return Example(fmt, origin, index, images=[image], messages=caption_messages(record, image, where, _text))


def examples_from_source(source: SourceRecords, forced: str | None) -> list[Example]:
    """All records of one source as Examples, in the forced format or the one detected from its keys."""
    if not source.records:
        return []
    fmt = forced or source.forced_format or detect_format(source.records[0])
    if fmt is None:
        keys = ", ".join(sorted(source.records[0])) or "none"
        raise DataError(f"{source.origin}: unknown dataset format (record keys: {keys}); known formats: "
                        f"{', '.join(KNOWN_FORMATS)} (use --dataset-format to force one).")
    if fmt == "text" and not source.text_lines and "text" not in source.records[0]:
        raise DataError(f"{source.origin}: text format needs a 'text' field.")
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
    (instructions, chat, QA)."""
    if examples and all(e.format == "preference" for e in examples):
        return "preference"
    return "text" if examples and all(e.format in TEXT_TASK_FORMATS for e in examples) else "qa"
