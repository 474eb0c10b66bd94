"""KTO (Kahneman-Tversky optimisation) on the engine: unpaired preference data, each answer labelled desirable
or undesirable (TRL's unpaired preference format, LLaMA-Factory's `kto_tag`).

The loss is TRL's KTOTrainer loss ("kto"): with r the answer's log-probability ratio to the reference and kl
the batch's estimate of KL(policy || reference), a desirable answer is pushed above kl and an undesirable one
below it (training/objectives/losses.py `kto_loss`). The KL estimate uses mismatched sequences, as TRL does:
each example's prompt with the previous example's answer.

The machinery is DPO's (training/objectives/dpo.py): an example is a pair of sequences, its answer and its
KL sequence, packed like a DPO pair; the reference log-probabilities of both are computed once before the first
step (the base with the adapter off, or --from-adapter) and kept through resume. Unlike TRL, the KL estimate
is per micro-batch and process rather than gathered across processes: a detached reference point, it only
shifts the loss's midpoint.

An undesirable answer is never a target: it only enters the loss through -r, pushing its probability down.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from training.data.formats import Example
from training.data.tokenize import CUT_OFF, cut_off_sentence
from training.objectives.dpo import (
    MethodError,
    PreferenceObjective,
    TokenizedPair,
    _sequence,
    collate_pairs,
    prepare_reference,
)
from training.objectives.losses import kto_loss_module

log = logging.getLogger("train")
NAME = "kto"
METRICS = ("kl", "reward")
KTO_LR_FACTOR = 1 / 3  # as DPO: a preference loss moves the model faster than cross-entropy at SFT's rate


@dataclass
class LabelledAnswer(TokenizedPair):
    """An example's answer (`chosen`) and its KL sequence (`rejected`: its prompt with another example's answer),
    with its label. The reference log-probs are (answer, KL sequence)."""

    desirable: bool = True


def wants_kto(cfg, examples: list[Example], multimodal: bool) -> bool:
    """True when this run trains with KTO: labelled data makes --method kto (logged); --method kto without
    labelled data, labelled data mixed with other formats, or on a multimodal model, is a MethodError."""
    labelled = [e for e in examples if e.format == NAME]
    if cfg.method == NAME and not labelled:
        first = examples[0]
        raise MethodError(f"--method kto trains on labelled answers (records with a 'label' true or false), but "
                          f"{first.origin} is in {first.format} format.")
    if not labelled:
        return False
    if multimodal:
        raise MethodError("KTO is for text-only models; this model is multimodal, so train it on SFT data.")
    if cfg.train_on_prompt:
        raise MethodError("--train-on-prompt does not apply to KTO: it weighs the answers' log-probabilities, "
                          "never the prompt's; leave it out.")
    if len(labelled) != len(examples):
        other = next(e for e in examples if e.format != NAME)
        raise MethodError(f"{other.origin} is in {other.format} format while {labelled[0].origin} holds labelled "
                          "(KTO) answers; train them in separate runs.")
    if cfg.method == "dpo":
        raise MethodError(f"--method dpo trains on chosen/rejected pairs, but {labelled[0].origin} holds labelled "
                          "(KTO) answers; use --method kto or leave --method out.")
    if cfg.method == "lora":
        log.info("Labelled answers (label true/false): training with KTO (--method kto).")
        cfg.method = NAME
    desirable = sum(1 for e in labelled if e.label)
    log.info("KTO: beta %g, %d desirable and %d undesirable answers (weights %g and %g); reference: %s.",
             cfg.kto_beta, desirable, len(labelled) - desirable, cfg.desirable_weight, cfg.undesirable_weight,
             "the --from-adapter adapter" if cfg.from_adapter else "the base model (adapter switched off)")
    return True


def tokenize_labelled(tokenizer, examples: list[Example], max_length: int, skipped: list | None = None) -> tuple:
    """(kept examples, LabelledAnswers). An example whose answer the sequence length cuts off is skipped into
    `skipped` (or, when `skipped` is None, a DataError naming the records)."""
    answers = [_sequence(tokenizer, e, e.chosen, max_length) for e in examples]
    kept, result, cut = [], [], []
    for index, (example, answer) in enumerate(zip(examples, answers, strict=True)):
        if answer.trainable <= 1:  # the first token predicts nothing once packed
            cut.append((example, CUT_OFF))
            continue
        other = examples[index - 1] if len(examples) > 1 else example  # TRL's shift: the previous one's answer
        mismatched = _sequence(tokenizer, example, other.chosen, max_length) if type(other.chosen) is type(
            example.chosen) else answer
        kl = mismatched if mismatched.trainable > 1 else answer
        kept.append(example)
        result.append(LabelledAnswer(answer, kl, desirable=bool(example.label)))
    if cut and skipped is None:
        from training.data.sources import DataError

        raise DataError(cut_off_sentence(cut, max_length) + "; raise --max-seq-length or shorten the prompts "
                        "(--strict-data refuses them).")
    if skipped is not None:
        skipped += cut
    return kept, result


class KTOObjective(PreferenceObjective):
    """KTO for the loop: labelled answers packed as DPO pairs are, a step's loss the mean over its examples."""

    name = NAME
    metrics = METRICS
    learning_rate_factor = KTO_LR_FACTOR

    def __init__(self, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                 strict: bool = False) -> None:
        super().__init__(beta, strict)
        self.weights = (desirable_weight, undesirable_weight)

    @classmethod
    def wants(cls, cfg, examples: list[Example], multimodal: bool) -> bool:
        return wants_kto(cfg, examples, multimodal)

    @classmethod
    def from_config(cls, cfg) -> KTOObjective:
        return cls(cfg.kto_beta, cfg.desirable_weight, cfg.undesirable_weight, cfg.strict_data)

    def tokenize(self, tokenizer, examples: list[Example], max_length: int, train_on_prompt: bool):
        self.skipped = []
        self.examples, pairs = tokenize_labelled(tokenizer, examples, max_length,
                                                 None if self.strict else self.skipped)
        return pairs

    def before_training(self, trainer, split, start, checkpoints: Path, resumed: Path | None) -> None:
        prepare_reference(trainer, split, start, checkpoints, resumed)

    def summary(self, trainer, monitor, validated: bool) -> dict:
        prefix = "val_" if validated else "window_"
        evaluations = [h for h in trainer.state.history if f"{prefix}kl" in h]
        last = evaluations[-1] if evaluations else None
        return {"kto": {"beta": self.beta, "desirable_weight": self.weights[0],
                        "undesirable_weight": self.weights[1], "reference": self.reference,
                        "measured_on": "validation examples" if validated else "training examples",
                        "final": None if last is None else {"step": last["step"], "kl": last[prefix + "kl"],
                                                            "reward": last[prefix + "reward"]}}}

    def loss_module(self, model, use_liger: bool):
        return kto_loss_module(model, self.beta, *self.weights)

    def collate(self, batch, pad_id: int) -> dict:
        """The pairs' tensors (training/objectives/dpo.py) and each example's label."""
        import torch

        tensors = collate_pairs(batch, pad_id)
        tensors["desirable"] = torch.tensor([pair.desirable for pair in batch.pairs], dtype=torch.bool)
        return tensors
