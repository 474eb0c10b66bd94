"""Hardening v2 (issue 21, item 8): `train.sh --output DIR` on another, full filesystem is refused before
training, and a disk filling during the run is named correctly."""

from __future__ import annotations

import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from training import guards
from training.guards import DiskFullError, check_disk, disk_full_error

Usage = namedtuple("Usage", "total used free")
GiB = 1024**3


@pytest.fixture
def two_disks(tmp_path, monkeypatch):
    """tmp_path/work on a roomy disk (60 GiB free), tmp_path/full (where --output goes) on a full one (1 MiB)."""
    work, full = tmp_path / "work", tmp_path / "full"
    work.mkdir()
    full.mkdir()
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        result = real_stat(path, *args, **kwargs)
        device = 2 if Path(path).is_relative_to(full) else 1
        return os.stat_result((*result[:2], device, *result[3:]))

    monkeypatch.setattr(guards.os, "stat", stat)
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: Usage(100 * GiB, 0, 2**20 if Path(p).is_relative_to(full) else 60 * GiB))
    return work, full


def test_a_full_output_disk_is_refused_before_training_and_named(two_disks):
    work, full = two_disks
    with pytest.raises(DiskFullError, match=f"free in {full}(?!/lora).*but only 1.0 MiB is free"):
        check_disk(work, 10_000_000, 3, full / "lora")
    check_disk(work, 10_000_000, 3, work / "lora")  # the roomy disk alone: fine


def test_a_disk_filling_during_the_run_names_the_output_disk(two_disks):
    work, full = two_disks
    message = str(disk_full_error(work, 10_000_000, 3, full / "lora"))
    assert message.startswith(f"The disk holding {full} is full") and "1.0 MiB is free" in message
