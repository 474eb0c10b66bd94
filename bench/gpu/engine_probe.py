#!/usr/bin/env python3
"""Our training engine as `./train.sh` runs it (train_lora.py's `main` with the same flags), in this process,
with a probe on the loop:

- the end of each optimizer step is timed, GPU-synchronised, with its examples' token counts (the engine packs
  rows without padding, so these are the tokens it computes);
- the peak GPU memory allocated by torch (torch.cuda.max_memory_allocated) is read after every step;
- once `--time-cap` seconds of steps after the `--warmup` first ones have run, the run is stopped as Ctrl+C stops
  it: the engine finishes the step, saves the adapter and exits with status 130;
- the trainable parameters, the training precision, gradient checkpointing and whether Liger's fused loss is in
  use are read from the engine's own objects, so the report says what actually ran.

The record is written to `--result` every few seconds and at the end (a part killed at its time limit still has
its measured steps).

    engine_probe.py --result R.json [--warmup 3] [--time-cap 25] [--precision handler|bfloat16] -- TRAIN_LORA_ARGS
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

WRITE_EVERY = 2.0  # seconds between writes of the record during training


class Probe:
    def __init__(self, result: Path, warmup: int, time_cap: float, argv: list[str]) -> None:
        self.result, self.warmup, self.time_cap = result, max(1, warmup), time_cap
        self.record: dict = {"status": "starting", "warmup": self.warmup, "time_cap": time_cap, "argv": argv,
                             "steps": [], "peak_allocated": None, "peak_reserved": None}
        self.stop_sent = False
        self._written = 0.0

    def write(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._written < WRITE_EVERY:
            return
        self._written = now
        partial = self.result.with_suffix(".tmp")
        partial.write_text(json.dumps(self.record))
        partial.replace(self.result)

    def memory(self) -> None:
        import torch

        if torch.cuda.is_available():
            self.record["peak_allocated"] = torch.cuda.max_memory_allocated()
            self.record["peak_reserved"] = torch.cuda.max_memory_reserved()

    def describe(self, trainer) -> None:
        """What the engine chose: read once, at the first step."""
        model = trainer.model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        loss_module = trainer.accelerator.unwrap_model(trainer.loss_model)
        self.record.update({
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "parameters": sum(p.numel() for p in model.parameters()),
            "precision": trainer.plan.precision,
            "row_length": trainer.plan.row_length,
            "examples_per_step": trainer.plan.examples_per_step,
            "accumulation": trainer.plan.accumulation,
            "gradient_checkpointing": _checkpointing(base),
            "liger": getattr(loss_module, "_liger", None) is not None,
            "quantization": _quantization(base),
            "train_examples": len(trainer.train_set),
        })

    def after_step(self, trainer, indices: list[int]) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        steps = self.record["steps"]
        steps.append({"end": now, "lengths": [len(trainer.train_set[i].input_ids) for i in indices]})
        self.memory()
        if len(steps) > self.warmup and not self.stop_sent and now - steps[self.warmup - 1]["end"] >= self.time_cap:
            self.stop_sent = True
            self.record["stopped_by_time_cap"] = True
            os.kill(os.getpid(), signal.SIGINT)  # the engine's StopSignal: finish this step, save, exit 130
        self.record["status"] = "training"
        self.write()


def _checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is on; transformers 5 renamed the property."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        value = getattr(model, name, None)
        if value is not None:
            return bool(value)
    return False


def _quantization(model) -> str | None:
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if config is None:
        return None
    if isinstance(config, dict):
        return "4bit" if config.get("load_in_4bit") else "8bit" if config.get("load_in_8bit") else "other"
    return "4bit" if getattr(config, "load_in_4bit", False) else "8bit" if getattr(config, "load_in_8bit", False) \
        else "other"


def _import_status(module: str) -> str:
    """'ok VERSION' or the import error in one line."""
    import importlib

    try:
        imported = importlib.import_module(module)
    except Exception as exc:  # the point is to report it
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    top = sys.modules.get(module.split(".")[0], imported)
    return f"ok {getattr(top, '__version__', '')}".strip()


def install(probe: Probe, precision: str) -> None:
    """Wrap the engine's optimizer step (and, with --precision bfloat16, its placement) for the probe."""
    from training import loop, run
    from training.modeling import Placement

    original = loop.Trainer.train_step

    def timed_step(self, indices):
        if "trainable" not in probe.record:
            probe.describe(self)
        result = original(self, indices)
        probe.after_step(self, indices)
        return result

    loop.Trainer.train_step = timed_step
    if precision != "handler":
        choose = run.choose_placement

        def forced(requested, handler):
            placement = choose(requested, handler)
            probe.record["handler_precision"] = placement.precision
            return Placement(placement.device, precision) if placement.device == "cuda" else placement

        run.choose_placement = forced


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, train_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--time-cap", type=float, default=25.0)
    parser.add_argument("--precision", choices=("handler", "bfloat16"), default="handler",
                        help="handler: the engine's own choice (what users get); bfloat16: forced on the GPU")
    parser.add_argument("--expect", action="append", default=[], metavar="MODULE",
                        help="record whether MODULE imports (liger_kernel..., bitsandbytes)")
    args = parser.parse_args(ours)
    probe = Probe(args.result, args.warmup, args.time_cap, train_args)
    probe.record["imports"] = {module: _import_status(module) for module in args.expect}
    probe.record["precision_forced"] = args.precision if args.precision != "handler" else None
    probe.write(force=True)
    try:
        install(probe, args.precision)
        import train_lora

        status = train_lora.main(train_args)
    except BaseException as exc:  # recorded, then re-raised with its traceback for the log
        probe.memory()
        probe.record.update(status="error", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
        probe.write(force=True)
        if isinstance(exc, Exception):
            traceback.print_exc()
            return 1
        raise
    probe.memory()
    interrupted = status == 130 and probe.stop_sent
    # a non-zero status (the engine printed "Error: ..." on stderr): the check reads the reason from the log
    probe.record.update(exit_status=status, status="ok" if status == 0 or interrupted else "error")
    probe.write(force=True)
    return 0 if probe.record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
