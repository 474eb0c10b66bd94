"""The interface every training objective implements (SFT, DPO, ...): what the run asks of it and what the
loop trains with. The loop and the run know nothing else about an objective."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Objective(Protocol):
    """A training objective. Implementations: training/objectives/sft.py, dpo.py, kto.py."""

    name: str  # as --method and adapter_info.json spell it ("sft", "dpo")
    metrics: tuple[str, ...]  # extra per-weight statistics the loss module returns (logged, TensorBoard, history)
    learning_rate_factor: float  # times the handler's default learning rate when --learning-rate is not given
    examples: list  # after tokenize: the examples kept, in the order of tokenize's result
    skipped: list  # after tokenize: (example, reason) of the records left out

    @classmethod
    def wants(cls, cfg, examples: list, multimodal: bool) -> bool:
        """Whether this run trains with this objective (asked in registry order); refuses a mismatch of the
        data and --method in one sentence (a UserError)."""
        ...

    @classmethod
    def from_config(cls, cfg) -> Objective:
        """The objective with the run's settings (e.g. --dpo-beta)."""
        ...

    def tokenize(self, tokenizer, examples: list, max_length: int, train_on_prompt: bool) -> list:
        """The examples as what the loop trains on (Tokenized examples, tokenized pairs, ...). Afterwards
        `self.examples` pairs with what it returned (a long text document once per window) and `self.skipped`
        holds (example, why) for each record left out (no answer, or its answer cut off entirely), unless
        --strict-data made those a DataError."""
        ...

    def before_training(self, trainer, split, start, checkpoints: Path, resumed: Path | None) -> None:
        """Work done once before the first step (DPO: the reference log-probabilities)."""
        ...

    def summary(self, trainer, monitor, validated: bool) -> dict[str, Any]:
        """Sections this objective adds to adapter_info.json."""
        ...

    # --- what the loop calls each step ----------------------------------------------------------------
    def loss_module(self, model, use_liger: bool):
        """A module whose forward returns (loss sum, weight, *metrics) for a collated batch."""
        ...

    def weight(self, indices: list[int], examples: list) -> int:
        """What a step's loss is a mean over (labelled tokens, pairs, ...)."""
        ...

    def micro_batches(self, indices: list[int], examples: list, accumulation: int, processes: int, rank: int,
                      row_length: int) -> list:
        """This process's micro-batches of one step, as (batch, real) pairs."""
        ...

    def eval_batches(self, examples: list, row_length: int, rows_per_batch: int) -> list:
        """The validation set cut into batches."""
        ...

    def collate(self, batch, pad_id: int) -> dict:
        """Tensors for the loss module."""
        ...
