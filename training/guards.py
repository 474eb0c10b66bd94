"""Protecting a model directory: one training run at a time, and enough disk for what the run writes."""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import shutil
from pathlib import Path

from core.errors import UserError
from core.units import human_bytes

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


def required_bytes(trainable: int, keep: int) -> int:
    """What a run writes at most: `keep` numbered checkpoints (+1 being written), best, last, ./lora and lora.prev."""
    per = checkpoint_bytes(trainable)
    adapter = trainable * 4 * 2
    return int(DISK_MARGIN * ((keep + 1) * per + 4 * adapter) + FIXED_BYTES)


def check_disk(directory: Path, trainable: int, keep: int) -> None:
    """Refuse to start when the model directory's filesystem cannot hold the run's outputs."""
    need = required_bytes(trainable, keep)
    free = shutil.disk_usage(directory).free
    if free < need:
        raise DiskFullError(f"Training needs about {human_bytes(need)} free in {directory} for checkpoints and the adapter "
                            f"({keep} checkpoints kept, --save-total-limit), but only {human_bytes(free)} is free; free "
                            "some space or lower --save-total-limit.")


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, including torch's and safetensors' own wording of a short write."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc)
        if "No space left on device" in text or "unexpected pos" in text or "file write failed" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(directory: Path, trainable: int, keep: int) -> DiskFullError:
    return DiskFullError(f"The disk holding {directory} is full (about {human_bytes(required_bytes(trainable, keep))} is "
                         f"needed, {human_bytes(shutil.disk_usage(directory).free)} is free); the previous ./lora is "
                         "intact and --resume continues from the last complete checkpoint once space is freed.")

