"""Protecting a model directory: one training run at a time, and enough disk for what the run writes."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

from core.disk import is_disk_full
from core.errors import UserError
from core.units import human_bytes

__all__ = ["BusyError", "DiskFullError", "RunLock", "check_disk", "disk_full_error", "is_disk_full"]

LOCK_NAME = ".train.lock"
HELD_ENV = "LLM_INSTALLER_TRAIN_LOCK_HELD"  # set for workers whose launcher holds the lock
DISK_MARGIN = 1.5  # estimates are rough: ask for half as much again
FIXED_BYTES = 16 * 1024 ** 2  # logs, plots, TensorBoard events


class BusyError(UserError):
    """Another training run holds this model directory."""


class DiskFullError(UserError):
    """Not enough disk space for what the run must write."""


class RunLock:
    """An exclusive lock on a model directory for one training run.

    It is an flock on `.train.lock`: the kernel releases it when the holding process dies, however it
    dies, so a lock left by a killed run is never stale. The file names the holder for the message.
    """

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / LOCK_NAME
        self._handle = None

    def __enter__(self) -> RunLock:
        import fcntl

        if os.environ.get(HELD_ENV):
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = _describe(handle.read())
            handle.close()
            raise BusyError(f"Another training run ({holder}) is using {self.path.parent}; wait for it to finish "
                            "or stop it (./lora, lora.prev and checkpoints/ are untouched).") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "since": dt.datetime.now().isoformat(timespec="seconds")}))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the flock
            self._handle = None


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"PID {holder['pid']}, since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "PID unknown"


def checkpoint_bytes(trainable: int) -> int:
    """One checkpoint: adapter weights twice (safetensors and .bin) plus AdamW's two moments, float32."""
    return trainable * 4 * 4


def adapter_bytes(trainable: int) -> int:
    """One saved adapter (safetensors and .bin, float32)."""
    return trainable * 4 * 2


def required_bytes(trainable: int, keep: int) -> int:
    """What a run writes at most: `keep` numbered checkpoints (+1 being written), best, last, ./lora and lora.prev."""
    return sum(_needs(trainable, keep).values())


def _needs(trainable: int, keep: int) -> dict[str, int]:
    """What a run writes, split by where: the working directory (checkpoints, best/, last/, logs) and the
    adapter's folder (--output and lora.prev), each with the margin."""
    work = (keep + 1) * checkpoint_bytes(trainable) + 2 * adapter_bytes(trainable)
    return {"work": int(DISK_MARGIN * work + FIXED_BYTES), "output": int(DISK_MARGIN * 2 * adapter_bytes(trainable))}


def _existing(path: Path) -> Path:
    """`path`, or its nearest existing parent (--output may not exist yet): where its bytes will land."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def disk_needs(directory: Path, trainable: int, keep: int, output: Path | None = None) -> list[tuple[Path, int]]:
    """(folder, bytes needed on its filesystem) for each filesystem the run writes: the working directory
    `directory`, and the parent of --output `output` when that lies on another disk."""
    needs = _needs(trainable, keep)
    if output is None:
        return [(directory, sum(needs.values()))]
    target = _existing(output.parent)
    if os.stat(_existing(directory)).st_dev == os.stat(target).st_dev:
        return [(directory, sum(needs.values()))]
    return [(directory, needs["work"]), (output.parent, needs["output"])]


def check_disk(directory: Path, trainable: int, keep: int, output: Path | None = None) -> None:
    """Refuse to start when a filesystem the run writes (the model directory's, and --output's when it is
    another) cannot hold what goes there."""
    for where, need in disk_needs(directory, trainable, keep, output):
        free = shutil.disk_usage(_existing(where)).free
        if free < need:
            raise DiskFullError(f"Training needs about {human_bytes(need)} free in {where} for checkpoints and the "
                                f"adapter ({keep} checkpoints kept, --save-total-limit), but only {human_bytes(free)} "
                                "is free; free some space, lower --save-total-limit or choose another --output.")


def disk_full_error(directory: Path, trainable: int, keep: int, output: Path | None = None) -> DiskFullError:
    """The one sentence for a disk that filled up during the run, naming the disk with the least room left
    for its share (the model directory's, or --output's)."""
    shares = disk_needs(directory, trainable, keep, output)
    where, need = min(shares, key=lambda share: shutil.disk_usage(_existing(share[0])).free - share[1])
    return DiskFullError(f"The disk holding {where} is full (about {human_bytes(need)} is needed, "
                         f"{human_bytes(shutil.disk_usage(_existing(where)).free)} is free); the previous ./lora is "
                         "intact and --resume continues from the last complete checkpoint once space is freed.")
