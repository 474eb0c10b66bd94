"""Starting fresh or resuming: which checkpoint, the LoRA shape it fixes, and keeping runs apart in
checkpoints/ (a fresh run sets the previous one aside in checkpoints.prev/)."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from training.checkpointing import is_complete, newest_complete, remove_stale_temporaries
from training.data.sources import DataError
from training.launch import is_main_process
from training.loop import Trainer
from training.outputs import adopt_run, set_aside_checkpoints

log = logging.getLogger("train")


class NothingToResume(Exception):
    """--resume found a run that had already finished: not an error, but nothing to do."""


@dataclass
class LoraShape:
    """The LoRA settings a checkpoint was trained with; a resumed run must keep them."""

    rank: int
    alpha: int
    targets: list[str]


def data_fingerprint(sources, replay: float = 0.0) -> str:
    """A short hash of the data files' contents (name and size for Hub datasets), their weights and --replay."""
    parts = sorted((s.sha256 or f"{s.origin}:{len(s.records)}") + (f"@{s.weight!r}" if s.weight != 1 else "")
                   for s in sources) + ([f"replay@{replay!r}"] if replay else [])
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def find_checkpoint(resume: bool, resume_from: Path | None, checkpoints: Path) -> Path | None:
    """The checkpoint --resume / --resume-from name, checked; None for a fresh run."""
    remove_stale_temporaries(checkpoints)
    if not resume and resume_from is None:
        return None
    if resume_from is None:
        path, skipped = newest_complete(checkpoints)
        for incomplete in skipped:
            log.warning("Skipping %s: it was not completely written (the run was killed while saving it).",
                        incomplete.name)
        if path is None:
            raise DataError(f"--resume: no complete checkpoint-N in {checkpoints}; start without --resume.")
    else:
        path = Path(resume_from).expanduser()
        if not path.is_absolute() and not path.exists():
            path = checkpoints.parent / path  # the guide's paths are relative to the model directory
    path = path.resolve()
    if not path.is_dir():
        raise DataError(f"--resume-from: {path} does not exist; checkpoints are in {checkpoints}.")
    if not is_complete(path):
        raise DataError(f"{path} is not a complete training checkpoint (its adapter or trainer state is missing or "
                        "was cut off); --resume picks the newest complete one.")
    return path


def checkpoint_lora_shape(checkpoint: Path, lora_r: int | None, lora_alpha: int | None,
                          target_modules: str | None) -> LoraShape:
    """The checkpoint's rank/alpha/targets; flags that contradict them are an error (the weights would not fit)."""
    config = json.loads((checkpoint / "adapter_config.json").read_text(encoding="utf-8"))
    targets = config.get("target_modules") or []
    shape = LoraShape(int(config["r"]), int(config.get("lora_alpha") or 2 * config["r"]),
                      sorted([targets] if isinstance(targets, str) else targets))
    asked = {"--lora-r": (lora_r, shape.rank), "--lora-alpha": (lora_alpha, shape.alpha)}
    if target_modules and target_modules != "all-linear":
        asked["--target-modules"] = (sorted(t.strip() for t in target_modules.split(",") if t.strip()), shape.targets)
    for flag, (given, saved) in asked.items():
        if given is not None and given != saved:
            raise DataError(f"{checkpoint.name} was trained with {flag} {saved}, not {given}: resume with its "
                            f"settings, or start a fresh run without --resume.")
    return shape


def start_or_resume(trainer: Trainer, checkpoint: Path | None, checkpoints: Path, data: str) -> Path | None:
    """Load `checkpoint` into the trainer, or set the previous run's checkpoints aside for a fresh run.

    A fresh run must not share checkpoints/ with an older one: numeric order would make the older run's
    higher-numbered checkpoints look like the latest, and rotation would delete the new ones.
    Returns the checkpoint's path once its run is the current one.
    """
    if checkpoint is None:
        if is_main_process() and set_aside_checkpoints(checkpoints):
            log.info("Checkpoints of the previous run moved to %s.prev (resume it with --resume-from).", checkpoints)
        trainer.accelerator.wait_for_everyone()
        return None
    trainer.load_checkpoint(checkpoint)
    if trainer.finished():
        raise NothingToResume(f"Nothing to resume: {checkpoint.name} is from a run that already completed its "
                              f"{trainer.plan.epochs:g} {'cycles' if trainer.plan.circular else 'epoch(s)'}, and "
                              "./lora is unchanged; raise --epochs to train it further, or start without --resume.")
    if trainer.resumed_fingerprint and trainer.resumed_fingerprint != trainer.plan.data_fingerprint:
        log.warning("%s was trained on different data than --data %s; continuing with the new data.",
                    checkpoint.name, data)
    if not is_main_process():
        trainer.accelerator.wait_for_everyone()
        return checkpoint
    adopted = adopt_run(checkpoint, checkpoints.resolve())
    trainer.accelerator.wait_for_everyone()
    if adopted != checkpoint:
        log.info("%s is from another run: its checkpoints are now in %s, the latest run's in %s.prev.",
                 checkpoint.name, checkpoints, checkpoints)
    log.info("Resumed from %s at step %d (epoch %d).", checkpoint, trainer.state.step, trainer.state.epoch + 1)
    return adopted
