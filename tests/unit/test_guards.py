"""A model directory's guards: the disk-space check and full-disk errors (the run lock and a small disk are in
tests/e2e/test_guards_e2e.py)."""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple

import pytest

from training.guards import DiskFullError, check_disk, is_disk_full, required_bytes

Usage = namedtuple("Usage", "total used free")


def test_disk_check_refuses_with_the_sizes(tmp_path, monkeypatch):
    need = required_bytes(10_000_000, 3)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: Usage(10 * need, 9 * need, need - 1))
    with pytest.raises(DiskFullError, match=r"Training needs about .* free in .* but only .* is free"):
        check_disk(tmp_path, 10_000_000, 3)
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: Usage(10 * need, 0, need))
    check_disk(tmp_path, 10_000_000, 3)
    assert required_bytes(10_000_000, 5) > need


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5696 vs 5590"),
    RuntimeError("PytorchStreamWriter failed writing file data/2: file write failed"),
])
def test_full_disk_errors_are_recognised_through_their_causes(error):
    wrapped = RuntimeError("saving the checkpoint failed")
    wrapped.__cause__ = error
    assert is_disk_full(error) and is_disk_full(wrapped)
    assert not is_disk_full(RuntimeError("shape mismatch")) and not is_disk_full(OSError(errno.EACCES, "denied"))
