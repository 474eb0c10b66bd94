"""The base model against the tuned one on held-out examples (`llm-installer eval`, and train.sh at the end
of a run).

Per side: the loss on the answer tokens (token-weighted over the whole set, the same objective, packing and
labels as training's validation loss) and its perplexity; then greedy answers to each example's prompt,
scored against the reference answer with exact match, ROUGE-L and BLEU (training/text_metrics.py), and the
answers per second. Base and tuned share one copy of the weights: the base pass runs inside PEFT's
`disable_adapter()`.

Prompts and references come from the training tokenization (training/data/tokenize.py), so every format
train.sh reads works: the prompt is everything before the last answer (the chat template's
generation prompt included), the reference is that answer's tokens decoded. Examples without a prompt
(`text`, `completion` with an empty prompt) have no answer to compare: they get loss and perplexity only.
Preference pairs are evaluated on their chosen answers.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

from handlers.chat_templates import stop_token_ids
from training.data.formats import Example
from training.data.formats.base import EmptyRecord
from training.data.packing import collate, pack_rows
from training.data.preference import chosen_example
from training.data.tokenize import IGNORE_INDEX, Tokenized, tokenize_example
from training.objectives.losses import sft_loss_module
from training.text_metrics import answer_metrics

MAX_NEW_TOKENS_CAP = 512
NEW_TOKENS_MARGIN = 16  # beyond the longest reference answer: room to see a model run on
LOSS_BATCH_TOKENS = 16384  # tokens per forward pass of the loss (no gradients, logits only on answers)
GENERATION_BATCH = {"cuda": 32}  # prompts generated together; other devices: DEFAULT_GENERATION_BATCH
DEFAULT_GENERATION_BATCH = 8
# train.sh evaluates at most this many validation examples (greedy answers cost seconds each on a CPU)
RUN_MAX_EXAMPLES = {"cuda": 64}
DEFAULT_RUN_MAX_EXAMPLES = 16
TEXT_TASK_NOTE = "text examples have no prompt and answer: loss and perplexity only"


@dataclass
class EvalItem:
    """One example ready to evaluate: its tokens with answer labels, and (when it has one) the prompt
    before its last answer with that answer's token ids."""

    tokenized: Tokenized
    prompt_ids: list[int] | None
    answer_ids: list[int] | None


@dataclass
class EvalSet:
    """The evaluated examples, and how many were left out because truncation cut off their answer."""

    items: list[EvalItem]
    dropped: int = 0

    @property
    def answered(self) -> list[EvalItem]:
        return [item for item in self.items if item.prompt_ids is not None]


def _last_answer_start(labels: list[int]) -> int:
    """Index of the first token of the last labelled run."""
    index = len(labels) - 1
    while index >= 0 and labels[index] == IGNORE_INDEX:
        index -= 1
    while index > 0 and labels[index - 1] != IGNORE_INDEX:
        index -= 1
    return index


def has_prompt(example: Example) -> bool:
    """Whether the example asks something (chat formats, completion with a prompt) rather than being plain text."""
    return example.is_chat or bool(example.prompt.strip())


def prepare(tokenizer, examples: list[Example], max_length: int) -> EvalSet:
    """Tokenize `examples` as training does (loss on answers only), keeping those with answer tokens."""
    items, dropped = [], 0
    for example in examples:
        if example.format in ("preference", "kto"):
            if example.label is False:  # an undesirable KTO answer is no reference to score against
                continue
            example = chosen_example(example)
        try:
            tokenized = tokenize_example(tokenizer, example, max_length)
        except EmptyRecord:  # nothing to score (no answer): counted, as training skips it
            dropped += 1
            continue
        if tokenized.trainable == 0:
            dropped += 1
            continue
        prompt = answer = None
        if has_prompt(example):
            start = _last_answer_start(tokenized.labels)
            prompt, answer = tokenized.input_ids[:start], tokenized.input_ids[start:]
        items.append(EvalItem(tokenized, prompt, answer))
    return EvalSet(items, dropped)


def stop_ids(model, tokenizer) -> list[int]:
    """Token ids greedy decoding stops at: the model's and tokenizer's EOS, and the chat template's end-of-turn."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = list(configured) if isinstance(configured, list) else [configured] if configured is not None else []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    ids += stop_token_ids(tokenizer, getattr(tokenizer, "chat_template", None))
    return sorted(set(ids))


def auto_max_new_tokens(data: EvalSet) -> int:
    """Room for the longest reference answer plus a margin, capped."""
    longest = max((len(item.answer_ids) for item in data.answered), default=0)
    return min(MAX_NEW_TOKENS_CAP, longest + NEW_TOKENS_MARGIN)


def answer_loss(model, data: EvalSet, pad_id: int, device) -> tuple[float, int]:
    """(sum of token losses, labelled tokens) over every item, batched in packed rows."""
    import torch

    row_length = max(len(item.tokenized.input_ids) for item in data.items)
    rows = pack_rows([item.tokenized for item in data.items], row_length)
    per_batch = max(1, LOSS_BATCH_TOKENS // row_length)
    loss_model = sft_loss_module(model)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), per_batch):
            batch = {k: v.to(device) for k, v in collate(rows[start:start + per_batch], pad_id).items()}
            loss_sum, tokens = loss_model(**batch)
            total += float(loss_sum)
            count += int(tokens)
    return total, count


def greedy_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
                   device) -> list[str]:
    """Greedy answers to token-id prompts, generated `batch_size` at a time (left padded, similar lengths
    together); each ends at the first stop token."""
    stops = set(stop_ids(model, tokenizer))
    return [_decode(tokenizer, [token for token in ids if token not in stops])
            for ids in greedy_ids(model, tokenizer, prompts, max_new_tokens, batch_size, device)]


def greedy_ids(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int,
               device, logprobs: list | None = None) -> list[list[int]]:
    """The greedy answers' token ids, each up to and including its first stop token (or `max_new_tokens` ids
    when none came), generated `batch_size` prompts at a time (left padded, similar lengths together). Given a
    list `logprobs`, it receives each answer's token log-probabilities under the model (from the logits the
    generation computed anyway: the answers' loss without another forward pass), in the answers' order."""
    import torch
    from transformers import GenerationConfig

    stops = stop_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=pad_id,
                              use_cache=True, output_logits=logprobs is not None,
                              return_dict_in_generate=logprobs is not None)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[list[int]] = [[] for _ in prompts]
    scores: list[list[float]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in chosen)
        ids = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chosen), width), dtype=torch.long)
        for row, index in enumerate(chosen):
            prompt = prompts[index]
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        with torch.no_grad():
            output = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        sequences = output.sequences if logprobs is not None else output
        if logprobs is not None:  # (rows, steps): each generated token's log-probability
            logits = torch.stack(output.logits, dim=1).float()
            chosen_logprobs = torch.log_softmax(logits, dim=-1).gather(
                -1, sequences[:, width:width + logits.shape[1], None]).squeeze(-1).tolist()
        for row, index in enumerate(chosen):
            new = sequences[row, width:].tolist()
            end = next((n + 1 for n, token in enumerate(new) if token in stops), len(new))
            answers[index] = new[:end]
            if logprobs is not None:
                scores[index] = chosen_logprobs[row][:end]
    if logprobs is not None:
        logprobs += scores
    return answers


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def evaluate_side(model, tokenizer, data: EvalSet, max_new_tokens: int, batch_size: int, device) -> dict:
    """Every metric of the model as it is now (adapter on or off)."""
    started = time.monotonic()
    loss_sum, tokens = answer_loss(model, data, tokenizer.pad_token_id or 0, device)
    loss = loss_sum / max(1, tokens)
    result = {"loss": loss, "perplexity": math.exp(min(loss, 50)), "exact_match": None, "rouge_l": None,
              "bleu": None, "answers_per_second": None, "examples": len(data.items), "answer_tokens": tokens}
    answered = data.answered
    if answered:
        generation_started = time.monotonic()
        predictions = greedy_answers(model, tokenizer, [item.prompt_ids for item in answered], max_new_tokens,
                                     batch_size, device)
        seconds = time.monotonic() - generation_started
        references = [_decode(tokenizer, item.answer_ids) for item in answered]
        result.update(answer_metrics(predictions, references))
        result["answers_per_second"] = len(answered) / max(seconds, 1e-9)
        result["samples"] = [{"reference": r, "answer": p} for r, p in zip(references[:3], predictions[:3], strict=True)]
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def compare(model, tokenizer, data: EvalSet, *, base: bool = True, tuned: bool = True,
            max_new_tokens: int | None = None, batch_size: int | None = None, device="cpu") -> dict:
    """{"base": metrics, "tuned": metrics} (either may be left out) for a PEFT model with its adapter loaded
    (`tuned`), or a plain model (base only). The base pass switches the adapter off: one copy of the weights."""
    device_type = getattr(device, "type", str(device).split(":")[0])
    batch_size = batch_size or GENERATION_BATCH.get(device_type, DEFAULT_GENERATION_BATCH)
    max_new_tokens = max_new_tokens or auto_max_new_tokens(data)
    model.eval()
    results = {}
    if base:
        with model.disable_adapter() if tuned else nullcontext():
            results["base"] = evaluate_side(model, tokenizer, data, max_new_tokens, batch_size, device)
    if tuned:
        results["tuned"] = evaluate_side(model, tokenizer, data, max_new_tokens, batch_size, device)
    results["setup"] = {"examples": len(data.items), "answered": len(data.answered), "dropped": data.dropped,
                        "max_new_tokens": max_new_tokens, "batch_size": batch_size, "device": str(device),
                        "note": _note(len(data.items), len(data.answered), data.dropped)}
    return results


def _note(total: int, answered: int, dropped: int) -> str | None:
    notes = []
    if not answered:
        notes.append(TEXT_TASK_NOTE)
    elif answered < total:
        notes.append(f"{total - answered} of {total} examples are plain text (no prompt and answer): exact match, "
                     f"ROUGE-L, BLEU and answers/s cover the other {answered}")
    if dropped:
        notes.append(f"{dropped} example(s) left out: truncation to the model's length limit cut off their answer")
    return "; ".join(notes) or None


def evaluate_run(model, tokenizer, adapter_dir, examples: list[Example], tokenized: list[Tokenized],
                 validation: list[Tokenized], device) -> dict:
    """train.sh's end-of-run comparison: the base model against the adapter in `adapter_dir` on the first
    RUN_MAX_EXAMPLES (per device type) of the run's validation examples (`validation`: those of `tokenized`,
    which pairs with `examples`). {"skipped": why} when there is nothing to evaluate on."""
    import logging

    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    log = logging.getLogger("train")
    if not validation:
        return {"skipped": "no validation set"}
    held = {id(t) for t in validation}
    limit = RUN_MAX_EXAMPLES.get(str(device).split(":")[0], DEFAULT_RUN_MAX_EXAMPLES)
    chosen = [e for e, t in zip(examples, tokenized, strict=True) if id(t) in held][:limit]
    data = prepare(tokenizer, chosen, max(len(t.input_ids) for t in validation))
    if not data.items:
        return {"skipped": "the validation examples' answers were cut off by --max-seq-length"}
    set_peft_model_state_dict(model, load_file(str(adapter_dir / "adapter_model.safetensors"), device=str(device)))
    log.info("Evaluating the base model and the tuned one on %d of the %d validation example(s) ...",
             len(data.items), len(validation))
    try:
        result = compare(model, tokenizer, data, device=device)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"skipped": "out of GPU memory; run llm-installer eval with --batch-size 1"}
    result["setup"]["validation_examples"] = len(validation)
    return result
