"""Decisions taken from the data before training: the validation split, sequence length, and the
examples per optimizer step (with micro-batches and accumulation that fit in memory)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from training.sizing import auto_batch_rows, free_memory

MIN_VALIDATION_EXAMPLES = 5
DEFAULT_MAX_SEQ = 2048
# Evaluations should cost a small share of an epoch: a forward pass is about a third of a training step per
# token, so validation tokens <= EVAL_SHARE * 3 * training tokens / evaluations per epoch.
EVAL_SHARE = 0.10
MAX_VALIDATION_TOKENS = 100_000
TARGET_STEPS_PER_EPOCH = 32  # a small dataset still gets this many optimizer steps per epoch
AUTO_MAX_EXAMPLES = {"cuda": 16, "cpu": 8}


@dataclass
class Split:
    """Training and validation examples (validation may be empty: training-loss checks then), and their
    positions in the list that was split."""

    train: list
    val: list
    note: str
    train_index: list[int] = field(default_factory=list)
    val_index: list[int] = field(default_factory=list)


def _candidates(order: list[int], groups: list, fraction: float) -> list[int]:
    """Held-out candidates in the order they are taken: one of every group first (so each source is validated
    if any is), then the groups interleaved in proportion to their share. One group: `order`'s first share."""
    members: dict = {}
    for index in order:
        members.setdefault(groups[index], []).append(index)
    wanted = {g: min(len(m) - 1, max(1, round(len(m) * fraction))) for g, m in members.items()}
    first = [m[0] for g, m in members.items() if wanted[g] >= 1]
    rest = sorted(((k + 0.5) / wanted[g], position, m[k]) for position, (g, m) in enumerate(members.items())
                  for k in range(1, wanted[g]))
    return first + [index for _, _, index in rest]


def split_examples(tokenized: list, fraction: float, seed: int, evals_per_epoch: int,
                   groups: list | None = None) -> Split:
    """A seeded split, its validation part capped by tokens so evaluations stay cheap (the rest trains).

    `groups` (one key per example, e.g. its --data entry) draws the validation examples per group, so that
    every group is validated; without it the whole list is one group.
    """
    order = list(range(len(tokenized)))
    random.Random(seed).shuffle(order)
    wanted = round(len(order) * fraction)
    if fraction == 0 or wanted < MIN_VALIDATION_EXAMPLES or len(order) - wanted < 1:
        why = "--validation-split 0" if fraction == 0 else (
            f"{len(order)} examples leave {wanted} for validation (fewer than {MIN_VALIDATION_EXAMPLES})")
        return Split(tokenized, [], f"{why}: no validation set; auto-stop watches the running training loss "
                                    "(perfect loss, plateaus) and ./lora keeps the adapter with the lowest one",
                     list(range(len(tokenized))), [])
    candidates = _candidates(order, groups or [0] * len(tokenized), fraction)
    validated_groups = len({groups[i] for i in candidates}) if groups else 1
    total_tokens = sum(len(t.input_ids) for t in tokenized)
    budget = min(MAX_VALIDATION_TOKENS, EVAL_SHARE * 3 * total_tokens / max(1, evals_per_epoch))
    chosen, used = [], 0
    for index in candidates:
        size = len(tokenized[index].input_ids)
        if len(chosen) >= max(MIN_VALIDATION_EXAMPLES, validated_groups) and used + size > budget:
            break
        chosen.append(index)
        used += size
    held = set(chosen)
    train_index = [i for i in order if i not in held]
    capped = f" (capped from {len(candidates)} by tokens: evaluations stay near {EVAL_SHARE:.0%} of an epoch)" \
        if len(chosen) < len(candidates) else ""
    return Split([tokenized[i] for i in train_index], [tokenized[i] for i in chosen],
                 f"{len(train_index)} training and {len(chosen)} validation examples{capped}", train_index, chosen)


def choose_max_length(requested: int | None, handler_limit: int, model_config: dict) -> int:
    """--max-seq-length, else the handler's limit capped at 2048, never past the model's positions."""
    limit = requested or min(handler_limit, DEFAULT_MAX_SEQ)
    model_limit = model_config.get("max_position_embeddings") or model_config.get("n_positions")
    return min(limit, model_limit) if model_limit else limit


@dataclass
class BatchPlan:
    """Examples per optimizer step and how each process splits them."""

    examples_per_step: int  # all processes and micro-batches together (circular: the starting size)
    micro_batch: int  # examples per micro-batch and process
    accumulation: int
    max_examples_per_step: int  # circular growth cap; 0 = none
    eval_rows: int
    reason: str


def plan_batches(batch_size: int | None, accumulation: int | None, count: int, lengths: list[int], row_length: int,
                 model_config: dict, device: str, precision: str, checkpointing: bool, processes: int,
                 circular: bool) -> BatchPlan:
    """Examples per step from the flags, else from the data (enough steps per epoch) and memory."""
    kind = "cuda" if device.startswith("cuda") else device
    fit = auto_batch_rows(model_config, row_length, kind, precision, checkpointing, free_memory(device))
    typical = sorted(lengths)[int(0.9 * (len(lengths) - 1))] if lengths else row_length
    fit_examples = max(1, fit.rows * row_length // max(1, typical))
    if batch_size:
        accumulation = accumulation or 1
        per_step = batch_size * accumulation * processes
        reason = f"--batch-size {batch_size} x {accumulation} accumulation x {processes} process(es)"
        micro = batch_size
    else:
        cap = AUTO_MAX_EXAMPLES.get(kind, 8)
        wanted = max(processes, min(cap, round(count / TARGET_STEPS_PER_EPOCH)))
        per_process = math.ceil(wanted / processes)
        accumulation = accumulation or max(1, math.ceil(per_process / fit_examples))
        micro = math.ceil(per_process / accumulation)
        per_step = micro * accumulation * processes
        reason = (f"auto: {count} examples -> {per_step} per step for about {math.ceil(count / per_step)} steps per "
                  f"epoch; memory ({fit.reason}) fits ~{fit_examples} examples per micro-batch")
    max_per_step = 0
    if circular:
        # circular mode grows the batch from one example per process: many small steps first, then steadier ones
        max_per_step = max(per_step, fit_examples * accumulation * processes) if not batch_size else 0
        per_step = processes * accumulation if not batch_size else per_step
        micro = 1 if not batch_size else micro
    return BatchPlan(per_step, micro, accumulation, max_per_step, max(1, fit.rows), reason)
