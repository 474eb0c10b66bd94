"""Which examples each optimizer step trains on, and how a step is split into micro-batches.

A step is `examples_per_step` examples of the epoch's seeded shuffle, like a hand-written Trainer's
batch, so a small dataset gets as many optimizer steps per epoch as the user would expect. The step
is then split into accumulation x processes shards balanced by tokens, and each shard is packed into
rows: no padding inside a step, and the same examples per step whatever the split, which is why
`--batch-size 1 --gradient-accumulation-steps 4`, `--batch-size 4` and 2 processes x batch 2 take the
same steps (the loss is weighted by tokens over the whole step).
"""

from __future__ import annotations

import math
import random

from training.data.packing import PackedRow, pack_rows
from training.data.tokenize import IGNORE_INDEX, Tokenized


def epoch_steps(count: int, examples_per_step: int, seed: int, epoch: int) -> list[list[int]]:
    """The example indices of each optimizer step of `epoch` (a seeded shuffle cut into steps)."""
    order = list(range(count))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    size = max(1, examples_per_step)
    return [order[start:start + size] for start in range(0, count, size)]


def steps_in_epoch(count: int, examples_per_step: int) -> int:
    return math.ceil(count / max(1, examples_per_step))


def shard_step(indices: list[int], lengths: list[int], shards: int) -> list[list[int]]:
    """Split a step's examples into `shards` groups of similar token counts (longest first, to the lightest)."""
    groups: list[list[int]] = [[] for _ in range(shards)]
    loads = [0] * shards
    for index in sorted(indices, key=lambda i: (-lengths[i], i)):
        lightest = min(range(shards), key=lambda s: (loads[s], len(groups[s]), s))
        groups[lightest].append(index)
        loads[lightest] += lengths[index]
    return groups


def micro_batches(indices: list[int], examples: list[Tokenized], accumulation: int, processes: int, rank: int,
                  row_length: int) -> list[tuple[list[PackedRow], bool]]:
    """This process's `accumulation` micro-batches of one step, as (rows, real).

    A shard with no example (a step smaller than accumulation x processes) gets a stand-in row whose
    loss is not counted (real=False): every process must run the same number of forward/backward
    passes, or gradient synchronisation would wait forever.
    """
    lengths = [len(e.input_ids) for e in examples]
    shards = shard_step(indices, lengths, accumulation * processes)
    batches = []
    for micro in range(accumulation):
        mine = shards[micro * processes + rank]
        if mine:
            batches.append((pack_rows([examples[i] for i in mine], row_length), True))
        else:
            batches.append((pack_rows([examples[indices[0]]], row_length), False))
    return batches


def labelled_tokens(indices: list[int], examples: list[Tokenized]) -> int:
    """Loss-bearing tokens of these examples once packed (each example's first token predicts nothing)."""
    return sum(sum(1 for label in examples[i].labels[1:] if label != IGNORE_INDEX) for i in indices)
