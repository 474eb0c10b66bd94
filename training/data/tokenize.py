"""Turning Examples into token ids and labels: the model's chat template, loss on answers only."""

from __future__ import annotations

from dataclasses import dataclass

from handlers.chat_templates import normalise_messages, render_chat, template_supports_tools
from training.data.formats import Example
from training.data.sources import DataError

IGNORE_INDEX = -100


@dataclass
class Tokenized:
    """Token ids with labels (IGNORE_INDEX where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    images: object = None  # training.vision.ImageInputs (multimodal models: their examples are never packed)

    @property
    def trainable(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn (end-of-turn included)."""
    full = render_chat(tokenizer, messages, add_generation_prompt=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render_chat(tokenizer, messages[:index], add_generation_prompt=True) if index else ""
        through = render_chat(tokenizer, messages[: index + 1], add_generation_prompt=False)
        start = len(prefix) if full.startswith(prefix) else full.find(message.get("content") or "\0")
        end = len(through) if full.startswith(through) else start + len(message.get("content") or "")
        if start >= 0 and end > start:
            spans.append((start, end))
    return full, spans


def _label_from_spans(encoding, spans: list[tuple[int, int]], train_on_prompt: bool) -> list[int]:
    labels = []
    for token_id, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True):
        inside = any(s <= start < e or (start == end and s < end <= e) for s, e in spans)
        labels.append(token_id if (train_on_prompt or inside) else IGNORE_INDEX)
    return labels


def tokenize_example(tokenizer, example: Example, max_length: int, train_on_prompt: bool = False) -> Tokenized:
    """Token ids and labels of one example, truncated to `max_length`."""
    eos = tokenizer.eos_token or ""
    if example.is_chat:
        messages = normalise_messages(example.messages, template_supports_tools(tokenizer))
        if not any(m["role"] == "assistant" for m in messages) and not train_on_prompt:
            raise DataError(f"{example.origin}, record {example.index + 1}: no assistant message to learn from.")
        text, spans = _assistant_spans(tokenizer, messages)
        if eos and spans and eos not in text[spans[-1][0]:spans[-1][1]]:
            text = text[: spans[-1][1]] + eos + text[spans[-1][1]:]
            spans[-1] = (spans[-1][0], spans[-1][1] + len(eos))
    else:
        text = example.prompt + example.completion + eos
        spans = [(len(example.prompt), len(text))]
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = _label_from_spans(encoding, spans, train_on_prompt)
    ids = list(encoding["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and (not ids or ids[0] != bos):
        ids, labels = [bos] + ids, [IGNORE_INDEX] + labels
    truncated = len(ids) > max_length
    return Tokenized(ids[:max_length], labels[:max_length], truncated)


def tokenize_all(tokenizer, examples: list[Example], max_length: int, train_on_prompt: bool = False,
                 tokenize_one=None):
    """Tokenize every example (with `tokenize_one`, default tokenize_example; a multimodal model passes its
    processor and the processor's tokenize function); pre-flight: each must keep at least one trainable token."""
    tokenize_one = tokenize_one or tokenize_example
    results = []
    for example in examples:
        tokenized = tokenize_one(tokenizer, example, max_length, train_on_prompt)
        if tokenized.trainable == 0:
            reason = "was cut off by --max-seq-length" if tokenized.truncated else "is empty"
            raise DataError(f"{example.origin}, record {example.index + 1}: no trainable tokens "
                            f"(its answer {reason}).")
        results.append(tokenized)
    return results
