"""Turning Examples into token ids and labels: the model's chat template, loss on answers only.

Tool definitions are rendered the way the server renders them (serving/engines/base.py `chat_prompt`): passed
to the template as `tools=` when the template reads `tools`, left out otherwise; tool calls go through
`normalise_messages` (a template without tool-call support gets them as `<tool_call>` JSON text, the form the
server parses back), so a model is trained on exactly what it is served.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from handlers.chat_templates import (
    ChatTemplateError,
    fold_tool_turns,
    normalise_messages,
    render_chat,
    template_supports_tools,
)
from training.data.formats import Example
from training.data.formats.base import EmptyRecord
from training.data.sources import DataError

IGNORE_INDEX = -100


@dataclass
class Tokenized:
    """Token ids with labels (IGNORE_INDEX where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    images: object = None  # training.vision.ImageInputs (multimodal models: their examples are never packed)
    dropped: int = 0  # tokens cut off at the sequence length

    @property
    def trainable(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def uses_tools(tokenizer) -> bool:
    """Whether the chat template reads tool definitions (the server's test, so both render alike)."""
    return isinstance(tokenizer.chat_template, str) and "tools" in tokenizer.chat_template


def render_with_tools(tokenizer, messages: list[dict], add_generation_prompt: bool, tools: list | None) -> str:
    """The conversation through the chat template, with the tool definitions where the template takes them."""
    if not tools or not uses_tools(tokenizer):
        return render_chat(tokenizer, messages, add_generation_prompt)
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except ChatTemplateError:  # over the rendering budget: rendering it again would only double the wait
        raise
    except Exception:  # templates that reject the 'tool' role: tool results as user turns, as the server does
        return tokenizer.apply_chat_template(fold_tool_turns(messages), tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)


def _assistant_spans(tokenizer, messages: list[dict], tools: list | None = None,
                     context: frozenset[int] = frozenset()) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each trained assistant turn (end-of-turn
    included); turns in `context` (OpenAI's `weight: 0`, a prompt's few-shot answers) are not trained."""
    full = render_with_tools(tokenizer, messages, False, tools)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant" or index in context:
            continue
        prefix = render_with_tools(tokenizer, messages[:index], True, tools) if index else ""
        through = render_with_tools(tokenizer, messages[: index + 1], False, tools)
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


def _check_trainable(example: Example) -> None:
    """An undesirable (KTO `label: false`) answer must never become an SFT target."""
    if example.label is False:
        raise DataError(f"{example.origin}, record {example.index + 1}: an undesirable (label false) example "
                        "cannot be trained as a target; train labelled data with --method kto.")
    if example.label is not None or example.chosen is not None:  # KTO/DPO examples carry the answer apart
        messages = example.messages + (example.chosen if isinstance(example.chosen, list) else [])
        raise DataError(f"{example.origin}, record {example.index + 1}: a preference example reached SFT "
                        f"({len(messages)} messages); this is a bug.")


def tokenize_example(tokenizer, example: Example, max_length: int, train_on_prompt: bool = False) -> Tokenized:
    """Token ids and labels of one example, truncated to `max_length`."""
    _check_trainable(example)
    eos = tokenizer.eos_token or ""
    if example.is_chat:
        messages = normalise_messages(example.messages, template_supports_tools(tokenizer))
        trained = [i for i, m in enumerate(messages) if m["role"] == "assistant" and i not in example.context_turns]
        if not trained and not train_on_prompt:
            raise EmptyRecord(f"{example.origin}, record {example.index + 1}: no assistant message to learn from.")
        if not any((messages[i].get("content") or "").strip() or messages[i].get("tool_calls") for i in trained) \
                and not train_on_prompt:
            raise EmptyRecord(f"{example.origin}, record {example.index + 1}: the assistant's answer is empty.")
        text, spans = _assistant_spans(tokenizer, messages, example.tools, example.context_turns)
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
    return Tokenized(ids[:max_length], labels[:max_length], truncated, dropped=max(0, len(ids) - max_length))


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


@dataclass
class TokenizedSet:
    """What tokenizing a run's examples gave: the examples kept (a long text document once per window), their
    tokenized forms in the same order, and the records left out with why."""

    examples: list = field(default_factory=list)
    tokenized: list = field(default_factory=list)
    skipped: list[tuple[Example, str]] = field(default_factory=list)


def text_windows(tokenizer, example: Example, max_length: int) -> list[Tokenized]:
    """A plain-text document as consecutive windows of `max_length` tokens, every token trained once (a
    document is split, not cut); a short one is one window."""
    whole = tokenize_example(tokenizer, example, 1 << 62)
    ids, labels = whole.input_ids, whole.labels
    if len(ids) <= max_length:
        return [whole]
    return [Tokenized(ids[start:start + max_length], labels[start:start + max_length])
            for start in range(0, len(ids), max_length) if len(ids) - start > 1]  # a lone token predicts nothing


def is_document(example: Example) -> bool:
    """Whether an example is a plain-text document (no prompt): split into windows rather than truncated."""
    return not example.is_chat and not example.prompt and example.chosen is None


def cut_off_sentence(skipped: list[tuple[Example, str]], max_length: int) -> str:
    """One sentence naming how many answers --max-seq-length cut off entirely, the limit and the first records."""
    cut = [example for example, reason in skipped if reason == CUT_OFF]
    first = ", ".join(f"{e.origin} record {e.index + 1}" for e in cut[:3])
    return (f"{len(cut)} example(s) whose answer was cut off entirely by the sequence length limit "
            f"({max_length} tokens, --max-seq-length), first: {first}")


CUT_OFF = "answer cut off by --max-seq-length"


def tokenize_examples(tokenizer, examples: list[Example], max_length: int, train_on_prompt: bool = False,
                      strict: bool = False) -> TokenizedSet:
    """Every example tokenized for SFT: text documents split into windows; an example with no answer, or whose
    answer the sequence length cuts off entirely, skipped and counted (with `strict`, a DataError instead)."""
    result = TokenizedSet()
    for example in examples:
        try:
            pieces = text_windows(tokenizer, example, max_length) if is_document(example) else [
                tokenize_example(tokenizer, example, max_length, train_on_prompt)]
        except EmptyRecord as empty:
            if strict:
                raise DataError(f"{empty} (--strict-data)") from empty
            result.skipped.append((example, str(empty).split(": ", 1)[-1].rstrip(".")))
            continue
        pieces = [piece for piece in pieces if piece.trainable]
        if not pieces:
            result.skipped.append((example, CUT_OFF))
            continue
        for piece in pieces:
            result.examples.append(example if len(pieces) == 1 else dataclasses.replace(example))
            result.tokenized.append(piece)
    if strict and result.skipped:
        raise DataError(cut_off_sentence(result.skipped, max_length) + "; raise --max-seq-length or drop them "
                        "(--strict-data refuses them).")
    return result


def trained_runs(labels: list[int]) -> list[tuple[int, int]]:
    """(start, end) token index ranges of the labelled (trained) tokens."""
    runs, start = [], None
    for index, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = index
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, index))
            start = None
    return runs


def shown(tokenizer, tokenized: Tokenized) -> tuple[str, list[str]]:
    """An example as --dry-run shows it: its whole text with the trained parts between ⟦ and ⟧, and the trained
    parts alone."""
    ids, pieces, trained, last = tokenized.input_ids, [], [], 0
    for start, end in trained_runs(tokenized.labels):
        span = tokenizer.decode(ids[start:end])
        pieces += [tokenizer.decode(ids[last:start]), "⟦", span, "⟧"]
        trained.append(span)
        last = end
    pieces.append(tokenizer.decode(ids[last:]))
    return "".join(pieces), trained
