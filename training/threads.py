"""CPU threads for training: as many as there are idle cores, one for models too narrow to split.

Measured on 2 cores (bench/train_load.py, issue 22): with another CPU-bound process on the machine, torch's
default of one busy-waiting OpenMP thread per core made a toy run 3 to 4 times slower, because every
parallel region waits at its barrier for the thread the scheduler took away. train_lora.py therefore sets
OMP_WAIT_POLICY=PASSIVE before torch loads (a waiting thread sleeps instead of spinning), and the run uses
only the cores that were idle when it started. On a model narrower than SMALL_HIDDEN the matrix products are
too small for a second thread to pay for its synchronisation, so it trains on one thread (a toy of hidden
size 128 ran 1.7x faster on one thread than on two).

A user's OMP_NUM_THREADS always wins; multi-process runs get cores / processes from the launcher.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

log = logging.getLogger("train")
SMALL_HIDDEN = 256  # hidden sizes below this train on one thread
SAMPLE_SECONDS = 0.25  # the load's sample when none was started earlier


@dataclass(frozen=True)
class ThreadChoice:
    """How many threads the run computes with, and why."""

    threads: int
    reason: str


def choose_threads(cores: int, busy: float, hidden_size: int | None) -> ThreadChoice:
    """Threads for `cores` physical cores of which `busy` (a core count, fractional) are taken by other work."""
    if hidden_size is not None and hidden_size < SMALL_HIDDEN:
        return ThreadChoice(1, f"one thread: hidden size {hidden_size} is too narrow to split across cores")
    taken = min(cores - 1, round(busy))
    if taken <= 0:
        return ThreadChoice(cores, f"{cores} thread(s), one per core")
    return ThreadChoice(cores - taken, f"{cores - taken} of {cores} cores: {taken} busy with other work at the start")


class LoadSample:
    """Other processes' CPU use from `start()` until `busy_cores()`: the run starts the sample before loading the
    model and reads it after, so measuring the machine's load costs no waiting."""

    def __init__(self) -> None:
        self._process = None

    def start(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._process.cpu_percent(None)
        psutil.cpu_percent(None)

    def busy_cores(self) -> float:
        """Physical cores' worth of CPU that other processes used since `start()` (a short sample if not started)."""
        import psutil

        if self._process is None:
            self.start()
            time.sleep(SAMPLE_SECONDS)
        logical = psutil.cpu_count() or 1
        physical = psutil.cpu_count(logical=False) or logical
        total = psutil.cpu_percent(None) / 100 * logical  # logical CPUs' worth, this process included
        mine = self._process.cpu_percent(None) / 100
        return max(0.0, total - mine) * physical / logical


SAMPLE = LoadSample()


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def apply_cpu_threads(hidden_size: int | None) -> ThreadChoice | None:
    """Set torch's thread count for a CPU run (None, changing nothing, when OMP_NUM_THREADS is set)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    choice = choose_threads(physical_cores(), SAMPLE.busy_cores(), hidden_size)
    torch.set_num_threads(choice.threads)
    log.info("CPU: %s.", choice.reason)
    return choice
