"""The plan a run follows, decided before it starts: steps per epoch, circular growth, the LR schedule.

A step is an optimizer step everywhere: the schedule, the progress bar, checkpoint names and
`metrics.steps`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from training.batching import steps_in_epoch

WARMUP_FRACTION = 0.05
FLOOR = 0.1  # cosine decay ends at 10% of the peak learning rate
CIRCULAR_GROWTH_EVERY = 5  # cycles between batch-size increases
CIRCULAR_MAX_GROWTH = 4  # the batch grows to at most 4x its starting size


@dataclass
class Plan:
    """What the loop does, decided before it starts."""

    epochs: float  # math.inf for non-stop
    examples_per_step: int  # over all micro-batches and processes (circular: the starting size)
    accumulation: int  # micro-batches per step and process
    learning_rate: float
    evals_per_epoch: int
    circular: bool
    adaptive: bool
    constant_lr: bool
    optimizer: str
    precision: str
    device: str
    checkpoints: Path
    save_total_limit: int
    row_length: int = 2048  # packed row width (the longest example fits)
    processes: int = 1
    strategy: str = "ddp"
    eval_rows: int = 4  # packed rows per evaluation forward pass
    chat_template: str | None = None
    max_examples_per_step: int = 0  # circular growth stops here (what fits in memory); 0 = no cap
    data_fingerprint: str | None = None  # saved in checkpoints so a resume on other data is noticed


def examples_for_cycle(plan: Plan, cycle: int, count: int) -> int:
    """Examples per step in epoch/cycle `cycle`: constant, or circular growth every few cycles up to 4x."""
    if not plan.circular:
        return max(1, min(plan.examples_per_step, count))
    growth = min(cycle // CIRCULAR_GROWTH_EVERY, CIRCULAR_MAX_GROWTH - 1)
    size = plan.examples_per_step * (1 + growth)
    if plan.max_examples_per_step:
        size = min(size, max(plan.examples_per_step, plan.max_examples_per_step))
    return max(1, min(size, count))


def steps_for_epoch(plan: Plan, epoch: int, count: int) -> int:
    """Optimizer steps epoch `epoch` takes (fewer in a final fractional epoch)."""
    steps = steps_in_epoch(count, examples_for_cycle(plan, epoch, count))
    if plan.epochs - epoch < 1:
        return max(1, math.ceil((plan.epochs - epoch) * steps))
    return steps


def evaluation_points(steps: int, evaluations: int) -> set[int]:
    """The steps of an epoch (1-based) after which to evaluate: `evaluations` points spread evenly, the last at
    the epoch's end, each at most once (so an epoch of 113 steps with two evaluations evaluates after steps 57
    and 113, never after 112 and again after 113)."""
    evaluations = max(1, min(evaluations, steps))
    return {math.ceil(k * steps / evaluations) for k in range(1, evaluations + 1)}


def total_steps(plan: Plan, count: int) -> int:
    """Optimizer steps the plan takes if nothing stops it (0 when unbounded)."""
    if math.isinf(plan.epochs):
        return 0
    return max(1, sum(steps_for_epoch(plan, epoch, count) for epoch in range(math.ceil(plan.epochs))))


def lr_factor(plan: Plan, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% (constant for non-stop and adaptive); `step` counts from 0."""
    warmup = max(1, int(WARMUP_FRACTION * total)) if total else 10
    if step < warmup:
        return (step + 1) / warmup
    if plan.constant_lr or not total:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))
