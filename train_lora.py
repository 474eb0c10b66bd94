#!/usr/bin/env python3
"""Entry of the shared training engine: `train.sh` runs this with the installed model's directory.

    python train_lora.py --model-dir ~/LLM/models/NAME --data data.json [--mode fast] [--circular]
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Waiting OpenMP threads sleep instead of spinning: on a busy machine a spinning thread steals the core the
# late one needs (training/threads.py). It must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    """Parse flags, train, and turn user mistakes into one clear line and a non-zero status."""
    from core.errors import UserError
    from training.config import ConfigError, parse_config

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("httpx", "transformers", "peft", "datasets", "urllib3", "bitsandbytes", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # peft still calls a transformers property renamed in v5; the warning is not the user's business.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        config = parse_config(argv)
    except ConfigError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    if not config.needs_bitsandbytes:
        from core.imports import hide_bitsandbytes

        hide_bitsandbytes()
    from training.launch import in_worker, is_main_process

    if not is_main_process():
        logging.getLogger().setLevel(logging.WARNING)  # one log: the main process's
    try:
        if not in_worker() and config.tensorboard_only is None and not config.dry_run:
            processes = _processes(config)
            if processes > 1:
                return _launch(config, processes, sys.argv[1:] if argv is None else argv)
        from training.run import run

        return run(config)
    except UserError as exc:
        if os.environ.get("LLM_INSTALLER_DEBUG"):
            raise
        if is_main_process():
            print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Aborted.", file=sys.stderr)
        return 130


def _processes(config) -> int:
    from training.launch import check_strategy, resolve_processes

    processes = resolve_processes(config.num_processes, config.device)
    check_strategy(config.strategy, processes, config.device)
    return processes


def _launch(config, processes: int, argv: list[str]) -> int:
    """Hold the model directory's lock and run `processes` workers of this script."""
    from training.guards import HELD_ENV, RunLock
    from training.launch import launch_workers

    _model_path, _output, workdir = config.resolved_paths()
    with RunLock(workdir):
        os.environ[HELD_ENV] = "1"
        print(f"Launching {processes} training processes ({config.strategy}).", flush=True)
        return launch_workers(processes, argv, str(Path(__file__).resolve()))


if __name__ == "__main__":
    sys.exit(main())
