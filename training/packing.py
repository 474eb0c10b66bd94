"""Packing tokenized examples into full rows with no cross-example attention.

Each row concatenates examples; position ids restart at 0 for every example, and the
model derives a block-diagonal causal mask from them (transformers' packed-sequence
support), so an example attends only to itself and no compute goes to padding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .tokenize import IGNORE_INDEX, Tokenized


@dataclass
class PackedRow:
    """One row of concatenated examples."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    @property
    def length(self) -> int:
        return len(self.input_ids)


def pack(examples: list[Tokenized], row_length: int, seed: int) -> list[PackedRow]:
    """First-fit-decreasing packing of examples (shuffled by seed) into rows of at most row_length tokens."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda i: -len(examples[i].input_ids))
    rows: list[list[int]] = []
    space: list[int] = []
    for index in order:
        size = len(examples[index].input_ids)
        for r, free in enumerate(space):
            if size <= free:
                rows[r].append(index)
                space[r] -= size
                break
        else:
            rows.append([index])
            space.append(row_length - size)
    random.Random(seed + 1).shuffle(rows)
    packed = []
    for members in rows:
        ids, labels, positions = [], [], []
        for index in members:
            example = examples[index]
            ids += example.input_ids
            # The first token of each example has no prediction from the previous one.
            labels += [IGNORE_INDEX] + example.labels[1:]
            positions += list(range(len(example.input_ids)))
        packed.append(PackedRow(ids, labels, positions))
    return packed


def collate(rows: list[PackedRow], pad_id: int) -> dict:
    """Tensors for a batch of rows, right-padded to the longest row (padding is masked out)."""
    import torch

    width = max(row.length for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : row.length] = torch.tensor(row.input_ids)
        labels[i, : row.length] = torch.tensor(row.labels)
        # Padding continues the last example's positions so it never starts a new "example".
        positions[i, : row.length] = torch.tensor(row.position_ids)
        if row.length < width:
            last = row.position_ids[-1]
            positions[i, row.length:] = torch.arange(last + 1, last + 1 + width - row.length)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def useful_tokens(rows: list[PackedRow]) -> int:
    """Loss-bearing tokens in these rows."""
    return sum(sum(1 for label in row.labels if label != IGNORE_INDEX) for row in rows)
