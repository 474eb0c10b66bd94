"""Preference training (DPO) on the engine: the method from the data, pair tokenisation, packing of pairs,
the reference log-probabilities, and the objective the loop trains with.

The reference model is the model as training starts: the base with the adapter switched off
(`disable_adapter()`), or the `--from-adapter` adapter. Its log-probabilities do not change during a run,
so they are computed once, in one no-grad pass over every pair before the first step, and stored with
the pairs: one base copy in memory and no second adapter, no reference forward in each step (a step is
one forward and backward of the policy over chosen and rejected), and the SFT adapter to start from
needs no switching in and out. A resumed run recomputes them from the same starting point: the
starting adapter is kept in checkpoints/reference/ for that, since ./lora may have been replaced.

Pairs are packed like SFT examples, the chosen and the rejected answer as separate sequences (each
attends to itself only), in one forward pass; the loss sums each sequence's answer-token log-probs.
"""

from __future__ import annotations

import itertools
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from handlers.chat_templates import normalise_messages, render_chat, template_supports_tools
from training.batching import shard_step
from training.data.formats import Example
from training.data.packing import PackedRow, collate, pack_members
from training.data.sources import DataError
from training.data.tokenize import (
    CUT_OFF,
    IGNORE_INDEX,
    Tokenized,
    _label_from_spans,
)
from training.launch import is_main_process
from training.objectives.losses import preference_loss_module

log = logging.getLogger("train")
REFERENCE_DIR = "reference"  # in checkpoints/: the adapter a --from-adapter DPO run compares against
METRICS = ("reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected")

# DPO pushed at SFT's rate drags the chosen answers down with the rejected ones (measured on the tiny model:
# 3e-3 degenerated, 1e-3 learned): the default learning rate of a preference run is a third of SFT's.
DPO_LR_FACTOR = 1 / 3


class MethodError(DataError):
    """The data and --method disagree."""


def resolve_method(cfg, examples: list[Example], multimodal: bool = False) -> bool:
    """True when this run trains with DPO: preference data makes --method dpo (logged); --method dpo
    without preference data, preference data mixed with other formats, or on a multimodal model, is an
    error."""
    preference = [e for e in examples if e.format == "preference"]
    if cfg.method == "dpo" and not preference:
        first = examples[0]
        raise MethodError(f"--method dpo trains on preference pairs (records with prompt/chosen/rejected), but "
                          f"{first.origin} is in {first.format} format.")
    if not preference:
        return False
    if multimodal:
        raise MethodError("Preference training (DPO) is for text-only models; this model is multimodal, so train "
                          "it on SFT data.")
    if cfg.train_on_prompt:
        raise MethodError("--train-on-prompt does not apply to preference pairs: DPO compares the answers' "
                          "log-probabilities, never the prompt's; leave it out.")
    if len(preference) != len(examples):
        other = next(e for e in examples if e.format != "preference")
        raise MethodError(f"{other.origin} is in {other.format} format while {preference[0].origin} holds preference "
                          "pairs; train them in separate runs (SFT first, then DPO with --from-adapter ./lora).")
    if cfg.method == "lora":
        log.info("Preference data (prompt/chosen/rejected): training with DPO (--method dpo).")
        cfg.method = "dpo"
    log.info("DPO: sigmoid loss, beta %g; reference: %s.", cfg.dpo_beta,
             "the --from-adapter adapter" if cfg.from_adapter else "the base model (adapter switched off)")
    return True


# --- tokenisation ---------------------------------------------------------------------------------
@dataclass
class TokenizedPair:
    """A prompt with its chosen and rejected answers as two labelled sequences, and (once computed)
    the reference model's summed answer log-probabilities (chosen, rejected)."""

    chosen: Tokenized
    rejected: Tokenized
    reference: tuple[float, float] | None = None
    images = None  # as Tokenized: pairs are text only (a multimodal model's examples carry image inputs)

    @property
    def input_ids(self) -> list[int]:
        """Both sequences' tokens: a pair's size for batching, splitting and token counts."""
        return self.chosen.input_ids + self.rejected.input_ids

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated


def _common_prefix(a: str, b: str) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def _sequence(tokenizer, example: Example, answer, max_length: int) -> Tokenized:
    """Prompt + answer as token ids, labels on the answer's tokens only (the end-of-sequence token included)."""
    eos = tokenizer.eos_token or ""
    if example.is_chat:
        tools = template_supports_tools(tokenizer)
        prompt = normalise_messages(example.messages, tools)
        prefix = render_chat(tokenizer, prompt, add_generation_prompt=True)
        text = render_chat(tokenizer, prompt + normalise_messages(answer, tools), add_generation_prompt=False)
        start = _common_prefix(prefix, text)  # the template may render the prompt alone a little differently
        if eos and eos not in text[start:]:
            text += eos
    else:
        start, text = len(example.prompt), example.prompt + answer
        if eos and not text.endswith(eos):
            text += eos
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = _label_from_spans(encoding, [(start, len(text))], False)
    ids = list(encoding["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and (not ids or ids[0] != bos):
        ids, labels = [bos] + ids, [IGNORE_INDEX] + labels
    return Tokenized(ids[:max_length], labels[:max_length], len(ids) > max_length)


def tokenize_pairs(tokenizer, examples: list[Example], max_length: int,
                   skipped: list | None = None) -> list[TokenizedPair]:
    """Every preference example as a TokenizedPair; DataError naming the record when an answer has no token
    left after truncation (given `skipped`, such a pair is left out and listed there as (example, reason)
    instead), or both answers tokenize the same."""
    pairs = []
    for example in examples:
        where = f"{example.origin}, record {example.index + 1}"
        pair = TokenizedPair(_sequence(tokenizer, example, example.chosen, max_length),
                             _sequence(tokenizer, example, example.rejected, max_length))
        cut = [name for name, sequence in (("chosen", pair.chosen), ("rejected", pair.rejected))
               if sequence.trainable <= 1]  # the first token predicts nothing once packed
        if cut and skipped is not None:
            skipped.append((example, CUT_OFF))
            continue
        if cut:
            raise DataError(f"{where}: the {cut[0]} answer was cut off by --max-seq-length {max_length} "
                            "(the prompt fills it); raise it or shorten the prompt.")
        if pair.chosen.input_ids == pair.rejected.input_ids:
            raise DataError(f"{where}: 'chosen' and 'rejected' are the same once tokenized (up to --max-seq-length "
                            f"{max_length}), so there is no preference to learn.")
        pairs.append(pair)
    return pairs


# --- packing --------------------------------------------------------------------------------------
@dataclass
class PairBatch:
    """Packed rows of chosen/rejected sequences, and which sequence each token belongs to."""

    rows: list[PackedRow]
    owners: list[list[int]]  # per row and token: 2k (chosen of pair k), 2k+1 (rejected), -1 (no label)
    pairs: list[TokenizedPair]  # their reference log-probs are read when the batch is collated


def pack_pairs(pairs: list[TokenizedPair]) -> PairBatch:
    """Pack the pairs' sequences (each separately) into rows as wide as the longest of them.

    Not wider: a pair's two answers in one row would double its width, and a row's attention costs grow
    with its square (measured on SmolLM2-135M, CPU: six pairs in one 1169-token row took 1.6x as long as in
    six rows of 211 tokens)."""
    sequences = [seq for pair in pairs for seq in (pair.chosen, pair.rejected)]
    lengths = [len(s.input_ids) for s in sequences]
    rows, owners = [], []
    for members in pack_members(lengths, max(lengths)):
        ids, labels, positions, owner = [], [], [], []
        for index in members:
            sequence = sequences[index]
            ids += sequence.input_ids
            labels += [IGNORE_INDEX] + sequence.labels[1:]  # the first token has no prediction from the previous one
            positions += list(range(len(sequence.input_ids)))
            owner += [-1] + [index if label != IGNORE_INDEX else -1 for label in sequence.labels[1:]]
        rows.append(PackedRow(ids, labels, positions))
        owners.append(owner)
    return PairBatch(rows, owners, list(pairs))


def collate_pairs(batch: PairBatch, pad_id: int) -> dict:
    """Tensors for the loss module: collated rows, owners (-1 where no label), and the reference log-probs
    once computed (without them the loss module returns the pairs' log-probs: the reference pass)."""
    import torch

    tensors = collate(batch.rows, pad_id)
    owners = torch.full(tensors["input_ids"].shape, -1, dtype=torch.long)
    for i, owner in enumerate(batch.owners):
        owners[i, : len(owner)] = torch.tensor(owner)
    tensors["owners"] = owners
    if all(pair.reference is not None for pair in batch.pairs):
        tensors["reference"] = torch.tensor([pair.reference for pair in batch.pairs], dtype=torch.float32)
    return tensors


def _chunks(pairs: list, tokens_per_chunk: int) -> list[list]:
    """Consecutive groups of pairs of about `tokens_per_chunk` tokens (at least one pair each)."""
    groups, current, used = [], [], 0
    for pair in pairs:
        size = len(pair.input_ids)
        if current and used + size > tokens_per_chunk:
            groups.append(current)
            current, used = [], 0
        current.append(pair)
        used += size
    return groups + ([current] if current else [])


# --- the objective --------------------------------------------------------------------------------
class PreferenceObjective:
    """DPO for the loop: pairs instead of examples, a step's loss the mean over its pairs."""

    name = "dpo"
    metrics = METRICS
    learning_rate_factor = DPO_LR_FACTOR

    @classmethod
    def wants(cls, cfg, examples: list[Example], multimodal: bool) -> bool:
        return resolve_method(cfg, examples, multimodal)

    @classmethod
    def from_config(cls, cfg) -> PreferenceObjective:
        return cls(cfg.dpo_beta, getattr(cfg, "strict_data", False))

    def tokenize(self, tokenizer, examples: list[Example], max_length: int, train_on_prompt: bool):
        """Tokenized pairs (resolve_method refused --train-on-prompt); a pair whose answer the sequence length
        cuts off is skipped and counted, or refused with --strict-data."""
        self.skipped = []
        pairs = tokenize_pairs(tokenizer, examples, max_length, None if self.strict else self.skipped)
        skipped = {id(example) for example, _ in self.skipped}
        self.examples = [e for e in examples if id(e) not in skipped]
        return pairs

    def before_training(self, trainer, split, start, checkpoints: Path, resumed: Path | None) -> None:
        prepare_reference(trainer, split, start, checkpoints, resumed)

    def summary(self, trainer, monitor, validated: bool) -> dict:
        return {"preference": preference_summary(trainer, monitor, validated)}

    def __init__(self, beta: float, strict: bool = False) -> None:
        self.beta = beta
        self.strict = strict  # --strict-data: refuse pairs whose answer is cut off instead of skipping them
        self.reference = "the base model (adapter switched off)"  # described by prepare_reference
        self.examples: list[Example] = []  # after tokenize: the kept examples
        self.skipped: list[tuple[Example, str]] = []  # after tokenize: (example, why) of those left out

    def loss_module(self, model, use_liger: bool):
        return preference_loss_module(model, self.beta)

    def weight(self, indices: list[int], pairs: list[TokenizedPair]) -> int:
        return len(indices)

    def micro_batches(self, indices, pairs, accumulation: int, processes: int, rank: int, row_length: int):
        """This process's micro-batches of a step (as batching.micro_batches: a stand-in batch, not counted,
        where a shard is empty); rows are as wide as the batch's longest answer sequence, within `row_length`."""
        shards = shard_step(indices, [len(p.input_ids) for p in pairs], accumulation * processes)
        batches = []
        for micro in range(accumulation):
            mine = shards[micro * processes + rank]
            batches.append((pack_pairs([pairs[i] for i in mine or indices[:1]]), bool(mine)))
        return batches

    def eval_batches(self, pairs: list[TokenizedPair], row_length: int, rows_per_batch: int) -> list[PairBatch]:
        """Groups of about `rows_per_batch` rows' worth of tokens (the plan's rows, sized for memory)."""
        return [pack_pairs(group) for group in _chunks(pairs, row_length * rows_per_batch)]

    def collate(self, batch: PairBatch, pad_id: int) -> dict:
        return collate_pairs(batch, pad_id)


def compute_reference(trainer, pairs: list[TokenizedPair], adapter_weights: dict | None,
                      adapter_on: bool = False) -> None:
    """Store the reference model's answer log-probs in every pair (training and validation), in one
    no-grad pass shared out among the processes. The reference is the base with the adapter switched off;
    with `adapter_on`, the model as it is (a fresh run from --from-adapter); given `adapter_weights`, the
    model with those adapter weights (a resumed run; the trained ones are put back)."""
    import contextlib

    import torch
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    peft_model = trainer.accelerator.unwrap_model(trainer.loss_model).model
    kept = None
    if adapter_weights is not None:
        kept = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
        set_peft_model_state_dict(peft_model, adapter_weights)
    for pair in pairs:
        pair.reference = None
    batches = _chunks(pairs, trainer.plan.row_length * max(1, trainer.plan.eval_rows))
    offsets = [0, *itertools.accumulate(len(group) for group in batches)]
    n, rank = trainer.plan.processes, trainer.accelerator.process_index
    results = torch.zeros(len(pairs), 2, device=trainer.accelerator.device)
    switched_off = contextlib.nullcontext() if adapter_on or adapter_weights is not None else \
        peft_model.disable_adapter()
    trainer.loss_model.eval()
    try:
        with torch.no_grad(), switched_off:
            for r in range(math.ceil(len(batches) / n)):  # every process runs as many forwards as the others
                index = r * n + rank
                group = batches[index] if index < len(batches) else batches[0]
                logps = trainer.loss_model(**trainer._to_device(pack_pairs(group)))
                if index < len(batches):
                    results[offsets[index]:offsets[index] + len(group)] = logps.float()
    finally:
        trainer.loss_model.train()
        if kept is not None:
            set_peft_model_state_dict(peft_model, kept)
    if n > 1:
        results = trainer.accelerator.reduce(results, reduction="sum")
    for pair, (chosen, rejected) in zip(pairs, results.tolist(), strict=True):
        pair.reference = (chosen, rejected)


def prepare_reference(trainer, split, start, checkpoints: Path, resumed: Path | None) -> None:
    """Compute the reference log-probs of every training and validation pair before the first step."""
    started = time.monotonic()
    weights = reference_weights(start.weights if start else None, checkpoints, resumed)
    trainer.objective.reference = "the base model (adapter switched off)" if weights is None else (
        f"the starting adapter ({start.path})" if start else "the starting adapter (checkpoints/reference)")
    # a fresh run holds the starting adapter already: no weights to swap in
    compute_reference(trainer, split.train + split.val, None if start else weights, adapter_on=start is not None)
    log.info("%s reference: %s; log-probabilities of %d %s computed in %.1fs.", trainer.objective.name.upper(),
             trainer.objective.reference, len(split.train) + len(split.val),
             "pairs" if trainer.objective.name == "dpo" else "examples", time.monotonic() - started)


def preference_summary(trainer, monitor, validated: bool) -> dict:
    """adapter_info.json's `preference` section: beta, the reference, and the reward statistics at the kept
    (best) evaluation and the last one, on validation pairs or else on the training pairs of that window."""
    prefix = "val_" if validated else "window_"
    evaluations = [h for h in trainer.state.history if f"{prefix}{METRICS[0]}" in h]

    def pick(entry: dict | None) -> dict | None:
        return None if entry is None else {"step": entry["step"], **{m: entry[prefix + m] for m in METRICS}}

    best = next((h for h in reversed(evaluations) if h["step"] == monitor.best_step), None)
    return {"loss": "sigmoid", "beta": trainer.objective.beta, "reference": trainer.objective.reference,
            "measured_on": "validation pairs" if validated else "training pairs",
            "best": pick(best), "final": pick(evaluations[-1] if evaluations else None)}


def reference_weights(start_weights: dict | None, checkpoints: Path, resumed: Path | None) -> dict | None:
    """The adapter weights the reference uses (None: the base with the adapter off). A fresh run uses the
    --from-adapter weights and keeps a copy in checkpoints/reference/; a resumed run reads that copy."""
    from safetensors.torch import load_file, save_file

    if resumed is not None:
        for directory in (resumed.parent / REFERENCE_DIR, checkpoints / REFERENCE_DIR):
            weights = directory / "adapter_model.safetensors"
            if weights.is_file():
                if directory.parent != checkpoints and not (checkpoints / REFERENCE_DIR).exists() \
                        and is_main_process():
                    shutil.copytree(directory, checkpoints / REFERENCE_DIR)  # the run adopted from elsewhere keeps it
                log.info("DPO reference: the starting adapter kept in %s.", directory)
                return load_file(str(weights))
        return None
    if start_weights is None or not is_main_process():
        return start_weights
    directory = checkpoints / REFERENCE_DIR
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in start_weights.items()},
              str(directory / "adapter_model.safetensors"))
    return start_weights
