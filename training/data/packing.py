"""Packing tokenized examples into rows with no cross-example attention, and collating rows.

Each row concatenates examples; position ids restart at 0 for every example, and the
model derives a block-diagonal causal mask from them (transformers' packed-sequence
support), so an example attends only to itself and no compute goes to padding.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.data.tokenize import IGNORE_INDEX, Tokenized


@dataclass
class PackedRow:
    """One row of concatenated examples."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    images: object = None  # training.vision.ImageInputs: a multimodal model's row holds one example, never packed

    @property
    def length(self) -> int:
        return len(self.input_ids)


def pack_members(lengths: list[int], row_length: int) -> list[list[int]]:
    """First-fit-decreasing packing of sequences of these lengths into rows of at most `row_length` tokens:
    the indices in each row (deterministic)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    members: list[list[int]] = []
    space: list[int] = []
    for index in order:
        size = lengths[index]
        row = next((r for r, free in enumerate(space) if size <= free), None)
        if row is None:
            members.append([index])
            space.append(row_length - size)
        else:
            members[row].append(index)
            space[row] -= size
    return members


def pack_rows(examples: list[Tokenized], row_length: int) -> list[PackedRow]:
    """First-fit-decreasing packing of `examples` into rows of at most `row_length` tokens (deterministic).
    A multimodal model's examples (`images` set, even empty) are never packed: each is a row of its own (see
    training/vision.py)."""
    if any(e.images is not None for e in examples):
        return [_concatenate([e]) for e in sorted(examples, key=lambda e: -len(e.input_ids))]
    members = pack_members([len(e.input_ids) for e in examples], row_length)
    return [_concatenate([examples[i] for i in row]) for row in members]


def _concatenate(examples: list[Tokenized]) -> PackedRow:
    ids, labels, positions = [], [], []
    for example in examples:
        ids += example.input_ids
        # The first token of each example has no prediction from the previous one.
        labels += [IGNORE_INDEX] + example.labels[1:]
        positions += list(range(len(example.input_ids)))
    return PackedRow(ids, labels, positions, examples[0].images if len(examples) == 1 else None)


def collate(rows: list[PackedRow], pad_id: int) -> dict:
    """Tensors for a batch of rows, right-padded to the longest row (padding is masked out)."""
    import torch

    if any(row.images is not None for row in rows):
        return collate_image_rows(rows, pad_id)
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
    """Loss-bearing tokens in these rows (the first token of each example predicts nothing)."""
    return sum(sum(1 for label in row.labels if label != IGNORE_INDEX) for row in rows)


def _stack_padded(tensors: list):
    """Concatenate along the first dimension, zero-padding the other dimensions to the largest."""
    import torch

    if all(t.shape[1:] == tensors[0].shape[1:] for t in tensors):
        return torch.cat(tensors, dim=0)
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for tensor in tensors:
        out = tensor.new_zeros((tensor.shape[0], *shape))
        out[(slice(None), *(slice(0, s) for s in tensor.shape[1:]))] = tensor
        padded.append(out)
    return torch.cat(padded, dim=0)


def collate_image_rows(rows: list, pad_id: int) -> dict:
    """Tensors for rows of single examples of a multimodal model: right-padded ids, labels and attention mask, the
    per-token extras padded with 0, the image tensors concatenated in row order (no position ids: the model
    computes its own)."""
    import torch

    width = max(row.length for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    per_token: dict[str, torch.Tensor] = {}
    tensors: dict[str, list] = {}
    for i, row in enumerate(rows):
        ids[i, : row.length] = torch.tensor(row.input_ids)
        labels[i, : row.length] = torch.tensor(row.labels)
        mask[i, : row.length] = 1
        if row.images is None:  # a packed text row cannot reach here: multimodal rows all carry ImageInputs
            continue
        for key, values in row.images.per_token.items():
            per_token.setdefault(key, torch.zeros((len(rows), width), dtype=torch.long))[i, : len(values)] = \
                torch.tensor(values)
        for key, value in row.images.tensors.items():
            tensors.setdefault(key, []).append(value)
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask, **per_token}
    batch.update({key: _stack_padded(values) for key, values in tensors.items()})
    return batch
