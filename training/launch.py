"""Process topology, decided once: how many training processes, which strategy, and who writes.

`./train.sh --num-processes N` re-launches train_lora.py as N workers with the environment that
torchrun and `accelerate launch` set (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), so
accelerate's Accelerator finds them; a run already started by torchrun or accelerate is a worker
as it is. Only the main process writes adapters, checkpoints, logs, TensorBoard, plots and reports.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from core.errors import UserError

STRATEGIES = ("ddp", "fsdp", "deepspeed")
WORKER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


class LaunchError(UserError):
    """The requested process topology cannot run here."""


@dataclass(frozen=True)
class Topology:
    """How many processes train, with which strategy."""

    processes: int
    strategy: str
    zero_stage: int | None = None


def in_worker() -> bool:
    """True inside a process started by a launcher (ours, torchrun or accelerate launch)."""
    return all(name in os.environ for name in WORKER_ENV)


def is_main_process() -> bool:
    """The one process that writes files and prints reports (rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def device_name(device) -> str:
    """'cpu' or 'cuda:N' for a torch device (libraries such as safetensors reject 'cpu:0')."""
    return str(device) if device.type == "cuda" else device.type


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_processes(requested: int | None, device: str) -> int:
    """--num-processes, else every visible GPU when several are visible (and the device allows it), else 1."""
    if requested is not None:
        if device in ("cuda", "auto") and requested > 1:
            gpus = visible_gpus()
            if gpus and requested > gpus:
                raise LaunchError(f"--num-processes {requested} asks for more processes than the {gpus} visible GPU(s).")
        if device == "mps" and requested > 1:
            raise LaunchError("--num-processes above 1 is not supported on Apple MPS; use --device cpu or one process.")
        return requested
    if device in ("cuda", "auto"):
        return max(1, visible_gpus())
    return 1


def check_strategy(strategy: str, processes: int, device: str) -> None:
    """FSDP and DeepSpeed shard across CUDA GPUs; refuse them elsewhere before any work starts."""
    if processes <= 1 or strategy == "ddp":
        return
    if device in ("cpu", "mps") or (device == "auto" and not visible_gpus()):
        raise LaunchError(f"--strategy {strategy} needs CUDA GPUs; on the CPU use --strategy ddp.")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_workers(processes: int, argv: list[str], script: str) -> int:
    """Run `script argv` as `processes` workers on this machine; returns the first failing status, else 0.

    A worker that fails stops the others (they would wait for it forever in the next collective).
    Ctrl+C and SIGTERM are passed on, so every worker stops cleanly and the main one saves the adapter.
    """
    threads = max(1, (os.cpu_count() or 1) // processes)
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(processes),
            "LOCAL_WORLD_SIZE": str(processes), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    workers = [subprocess.Popen([sys.executable, script, *argv],
                                env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(processes)]

    def forward(signum, _frame):
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = _wait_all(workers)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def _wait_all(workers: list[subprocess.Popen]) -> int:
    while True:
        codes = [worker.poll() for worker in workers]
        failed = next((code for code in codes if code not in (None, 0)), None)
        if failed is not None:
            time.sleep(2)  # let the others notice and exit on their own first
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
            # the main worker's status says what happened (130 = interrupted); a crash elsewhere is 1
            return workers[0].wait() or failed
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.2)


def make_accelerator(topology: Topology, device: str, precision: str, accumulation: int, micro_batch: int):
    """The Accelerator for this run: mixed precision from the handler's choice, the strategy's plugin.

    Accumulation is accelerate's (`accumulate()` skips DDP's gradient sync and DeepSpeed's step until the
    last micro-batch); the loop normalises losses by the step's labelled tokens itself.
    """
    from accelerate import Accelerator

    if topology.processes > 1 and topology.strategy != "ddp" and device != "cuda":
        raise LaunchError(f"--strategy {topology.strategy} needs CUDA GPUs; on the CPU use --strategy ddp.")
    mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(precision, "no") if device == "cuda" else "no"
    kwargs: dict = {"cpu": device == "cpu", "mixed_precision": mixed, "gradient_accumulation_steps": accumulation}
    if topology.processes > 1 and topology.strategy == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(use_orig_params=True)
    elif topology.processes > 1 and topology.strategy == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError as exc:
            raise LaunchError("--strategy deepspeed needs the deepspeed package: pip install deepspeed "
                              "(in the llm-installer environment).") from exc
        from accelerate.utils import DeepSpeedPlugin

        plugin = DeepSpeedPlugin(zero_stage=topology.zero_stage or 2, gradient_accumulation_steps=accumulation,
                                 gradient_clipping=1.0)
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch
        kwargs["deepspeed_plugin"] = plugin
    return Accelerator(**kwargs)
