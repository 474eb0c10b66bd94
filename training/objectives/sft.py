"""Supervised fine-tuning: cross-entropy on the answer tokens of packed rows."""

from __future__ import annotations

from pathlib import Path

from training.batching import labelled_tokens, micro_batches
from training.data.formats import Example
from training.data.packing import collate, pack_rows
from training.data.tokenize import Tokenized, tokenize_examples
from training.objectives.losses import sft_loss_module


class SFTObjective:
    """The loop's default objective: cross-entropy on the labelled tokens of packed rows, every token of a
    step weighted equally. See training/objectives/base.py for the interface."""

    name = "sft"
    metrics: tuple[str, ...] = ()  # extra per-weight statistics the loss module returns (none here)
    learning_rate_factor = 1.0

    @classmethod
    def wants(cls, cfg, examples: list[Example], multimodal: bool) -> bool:
        return True  # the fallback: every format trains with cross-entropy

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict  # --strict-data: refuse records with nothing to learn instead of skipping them
        self.examples: list[Example] = []  # after tokenize: the kept examples, one per window of a long document
        self.skipped: list[tuple[Example, str]] = []  # after tokenize: (example, why) of those left out

    @classmethod
    def from_config(cls, cfg) -> SFTObjective:
        return cls(getattr(cfg, "strict_data", False))

    def tokenize(self, tokenizer, examples: list[Example], max_length: int, train_on_prompt: bool) -> list[Tokenized]:
        """Tokenized examples (long text documents split into windows, empty or cut-off answers skipped)."""
        result = tokenize_examples(tokenizer, examples, max_length, train_on_prompt, self.strict)
        self.examples, self.skipped = result.examples, result.skipped
        return result.tokenized

    def before_training(self, trainer, split, start, checkpoints: Path, resumed: Path | None) -> None:
        """Nothing to prepare: cross-entropy needs no reference."""

    def summary(self, trainer, monitor, validated: bool) -> dict:
        return {}

    def loss_module(self, model, use_liger: bool):
        return sft_loss_module(model, use_liger)

    def weight(self, indices: list[int], examples: list[Tokenized]) -> int:
        """What a step's loss is a mean over: its labelled tokens."""
        return labelled_tokens(indices, examples)

    def micro_batches(self, indices, examples, accumulation: int, processes: int, rank: int, row_length: int):
        return micro_batches(indices, examples, accumulation, processes, rank, row_length)

    def eval_batches(self, examples: list[Tokenized], row_length: int, rows_per_batch: int) -> list:
        rows = pack_rows(examples, row_length)
        return [rows[i:i + rows_per_batch] for i in range(0, len(rows), rows_per_batch)]

    def collate(self, batch, pad_id: int) -> dict:
        return collate(batch, pad_id)
