"""A model directory's guards with real processes: the run lock against another process holding it, and a disk
too small refused by train.sh before training."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import copy_installed

from training.guards import BusyError, RunLock


def test_lock_is_exclusive_names_its_holder_and_dies_with_it(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(BusyError, match=r"Another training run \(PID \d+, since "):
            RunLock(tmp_path).__enter__()
    with RunLock(tmp_path):  # released on exit
        pass
    holder = subprocess.Popen(["python3", "-c", "import fcntl,sys,time; f=open(sys.argv[1],'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
                               str(tmp_path / ".train.lock")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(BusyError):
        RunLock(tmp_path).__enter__()
    holder.kill()
    holder.wait()
    with RunLock(tmp_path):  # a killed holder's lock is free at once: never stale
        assert json.loads((tmp_path / ".train.lock").read_text())["pid"] > 0


def test_a_small_disk_is_refused_before_training_and_lora_is_kept(builtin_model_dir, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        model_dir = copy_installed(builtin_model_dir, mount / "m")
        (model_dir / "lora").mkdir()
        (model_dir / "lora" / "adapter_model.safetensors").write_bytes(b"previous adapter")
        data = tmp_path / "d.json"
        data.write_text(json.dumps([{"question": "q?", "answer": "a."}] * 8))
        result = subprocess.run([str(model_dir / "train.sh"), "--data", str(data), "--no-tensorboard"],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 1 and "Training needs about" in result.stderr, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        assert (model_dir / "lora" / "adapter_model.safetensors").read_bytes() == b"previous adapter"
        assert not (model_dir / "checkpoints").exists()
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
