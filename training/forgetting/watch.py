"""The general reference during training: its loss on the model as it is now, at every evaluation while the
forgetting stop is on (at a few, within about a tenth of the training's cost, while it is off).

Evaluated like the validation set (training/loop.py `Trainer.evaluate`): the watch set packed into rows, a few
forward passes without gradients, the batches shared out among the processes (every process runs as many
passes as the others) and the sums reduced. The loss is SFT's cross-entropy on the answer tokens whatever the
run trains with: an SFT run uses its own loss module; a DPO or KTO run an SFT loss module on the same model
(adapter on), which is why those runs under FSDP or DeepSpeed (parameters sharded inside the prepared module)
are not watched.
"""

from __future__ import annotations

import math
import time

from training.data.packing import collate, pack_rows
from training.forgetting.reference import GeneralReference
from training.objectives.losses import sft_loss_module

MIN_BATCH_TOKENS = 4096  # tokens per forward pass of the watch set (the whole set is about 1,000)
# With the forgetting stop off, the reference is measured only once this many times its tokens have been trained
# since the last measurement: a training token costs about three forward-pass tokens, so the reference then costs
# about a tenth of the training (and less when steps are short and their fixed costs dominate).
SPARSE_TOKENS_FACTOR = 10 / 3


class GeneralWatch:
    """The reference and its evaluation on the trained model; `seconds` holds each evaluation's cost."""

    def __init__(self, reference: GeneralReference) -> None:
        self.reference = reference
        self.examples = reference.watch_examples()
        self.tokens = sum(len(example.input_ids) for example in self.examples)  # what one measurement reads
        self.seconds: list[float] = []
        self.measured_at: int | None = None  # the trained tokens at the last measurement (this session)
        self._batches: list | None = None
        self._module = None

    def batches(self, row_length: int, rows_per_batch: int, processes: int) -> list:
        """The watch set packed into rows as wide as its longest example (short rows: little attention wasted on
        the packed neighbours), in batches of at least MIN_BATCH_TOKENS (a forward without gradients needs far
        less memory than a training row; never fewer tokens than the run's evaluation batch), and in at least one
        batch per process when there are enough rows."""
        if self._batches is None:
            width = max(len(e.input_ids) for e in self.examples)
            rows = pack_rows(self.examples, width)
            per_batch = max(1, max(MIN_BATCH_TOKENS, row_length * max(1, rows_per_batch)) // width)
            per_batch = min(per_batch, math.ceil(len(rows) / max(1, processes)))
            self._batches = [rows[i:i + per_batch] for i in range(0, len(rows), per_batch)]
        return self._batches

    def due(self, trainer, final: bool) -> bool:
        """Whether this evaluation measures the reference: every one while the forgetting stop is on (any may be the
        one to stop at, and only measured ones may be kept); with it off (--force-epochs, non-stop, --max-forgetting
        0) the first, the `final` one and those after SPARSE_TOKENS_FACTOR x its tokens of training since the last,
        decided from token counts that every process shares (the measurement is a collective pass)."""
        if trainer.monitor.stops_on_forgetting or final or self.measured_at is None:
            return True
        return trainer.state.tokens - self.measured_at >= SPARSE_TOKENS_FACTOR * self.tokens

    def loss_module(self, trainer):
        """The module computing (loss sum, tokens): the run's own for SFT, else an SFT one on the same model."""
        if trainer.objective.name == "sft":
            return trainer.loss_model
        if self._module is None:
            self._module = sft_loss_module(trainer.accelerator.unwrap_model(trainer.loss_model).model)
        return self._module

    def loss(self, trainer) -> float:
        """The trained model's mean loss per answer token on the watch set (all processes take part)."""
        import torch

        started = time.monotonic()
        accelerator, plan = trainer.accelerator, trainer.plan
        batches, n = self.batches(plan.row_length, plan.eval_rows, plan.processes), plan.processes
        module = self.loss_module(trainer)
        totals = torch.zeros(2, device=accelerator.device)
        trainer.loss_model.eval()
        try:
            with torch.no_grad(), accelerator.autocast():
                for r in range(math.ceil(len(batches) / n)):
                    index = r * n + accelerator.process_index
                    rows = batches[index] if index < len(batches) else batches[0]
                    tensors = {k: v.to(accelerator.device) for k, v in collate(rows, trainer.pad_id).items()}
                    loss_sum, count = module(**tensors)[:2]
                    if index < len(batches):
                        totals += torch.stack([loss_sum.float(), count.float()])
        finally:
            trainer.loss_model.train()
        if n > 1:
            totals = accelerator.reduce(totals, reduction="sum")
        self.seconds.append(time.monotonic() - started)
        self.measured_at = trainer.state.tokens
        return float(totals[0] / totals[1].clamp(min=1))
