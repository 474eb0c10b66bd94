"""Checkpoints that are either complete or absent.

A checkpoint is written under a temporary name (`.tmp-checkpoint-N`) and renamed when complete;
its trainer_state.json is written last, so a directory without it is never taken for one. The
adapter weights are saved by PEFT (small), everything else of the training state by accelerate's
`save_state`: optimizer, gradient scaler and every process's RNG state (base model weights are
frozen and never copied into a checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

from training.launch import is_main_process
from training.outputs import STATE_FILE, numbered_checkpoints, save_adapter_dir

log = logging.getLogger("train")
TEMP_PREFIX = ".tmp-"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_complete(directory: Path) -> bool:
    """A checkpoint whose every file was written (its state file comes last, and must parse)."""
    try:
        json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (directory / ADAPTER_WEIGHTS).is_file()


def newest_complete(root: Path) -> tuple[Path | None, list[Path]]:
    """(the newest complete checkpoint-N, the newer incomplete ones that were skipped)."""
    skipped = []
    for candidate in reversed(numbered_checkpoints(root)):
        if is_complete(candidate):
            return candidate, skipped
        skipped.append(candidate)
    return None, skipped


def remove_stale_temporaries(root: Path) -> None:
    """Half-written checkpoints left by a killed run."""
    if root.is_dir():
        for leftover in root.glob(TEMP_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _skip_model_weights(_models, weights, _output_dir) -> None:
    weights.clear()  # the adapter is saved by PEFT; the frozen base weights never go into a checkpoint


def _skip_model_loading(models, _input_dir) -> None:
    models.clear()  # the adapter is loaded from its own file (load_adapter_weights)


def install_hooks(accelerator) -> None:
    """Make save_state/load_state handle the optimizer, scaler and RNG only."""
    accelerator.register_save_state_pre_hook(_skip_model_weights)
    accelerator.register_load_state_pre_hook(_skip_model_loading)


def _publish(staging: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)


def save_checkpoint(accelerator, model, directory: Path, state: dict, chat_template: str | None) -> None:
    """Write a complete checkpoint at `directory` (every process takes part; the main one writes files)."""
    staging = directory.with_name(TEMP_PREFIX + directory.name)
    if is_main_process():
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if is_main_process():
        save_adapter_dir(model, staging, chat_template=chat_template)
        (staging / STATE_FILE).write_text(json.dumps(state, default=str), encoding="utf-8")
        _publish(staging, directory)
    accelerator.wait_for_everyone()


def copy_adapter(source: Path, target: Path) -> None:
    """Copy a checkpoint's adapter files (not its optimizer or RNG state) to `target`, atomically."""
    staging = target.with_name(TEMP_PREFIX + target.name)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file() and (item.name.startswith("adapter_") or item.name in ("chat_template.jinja", STATE_FILE,
                                                                                  "README.md")):
            shutil.copy2(item, staging / item.name)
    _publish(staging, target)


def save_adapter_only(model, target: Path, chat_template: str | None) -> None:
    """The adapter alone (./checkpoints/last), atomically; main process only."""
    staging = target.with_name(TEMP_PREFIX + target.name)
    shutil.rmtree(staging, ignore_errors=True)
    save_adapter_dir(model, staging, chat_template=chat_template)
    _publish(staging, target)


def load_checkpoint(accelerator, model, directory: Path, device: str) -> dict:
    """Restore the adapter weights, optimizer, scaler and RNG states; returns the loop's saved state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(directory / ADAPTER_WEIGHTS), device=device))
    if (directory / "optimizer.bin").is_file():
        # weights_only for the optimizer and scaler whatever the installed torch's default is; accelerate's RNG
        # pickles are the only other files it reads, from our own checkpoint
        accelerator.load_state(str(directory), load_kwargs={"weights_only": True})
    else:
        log.warning("%s has no optimizer state (an older checkpoint): the optimizer starts afresh.", directory.name)
    return json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
