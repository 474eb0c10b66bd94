"""train.sh's engine end to end: multi-process and accumulation equivalence, kill -9 and resume,
one run per model directory, flags refused before anything is touched, and a real model."""

from __future__ import annotations

import json
import signal
import time

import pytest
from conftest import ROOT, copy_installed
from facts import FACTS
from train_helpers import adapter_info, adapter_weights, max_difference, train_sh

EXAMPLES = ROOT / "examples" / "data"
SAME = ["--force-epochs", "--epochs", "1", "--validation-split", "0", "--lora-dropout", "0", "--learning-rate", "1e-2"]


def _data(tmp_path, count=16):
    records = [{"question": f"Q{i}: {f['question']}", "answer": f["answer"]} for i, f in enumerate(FACTS * 4)][:count]
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(records))
    return str(path)


def test_two_processes_and_accumulation_train_like_one_big_batch(model_dir, tmp_path):
    data = _data(tmp_path)
    one = train_sh(model_dir, "--data", data, "--batch-size", "4", *SAME)
    assert one.returncode == 0, one.stdout
    reference, reference_info = adapter_weights(model_dir), adapter_info(model_dir)
    assert reference_info["metrics"]["steps"] == 4 and reference_info["distributed"]["processes"] == 1

    two = train_sh(model_dir, "--data", data, "--batch-size", "2", "--device", "cpu", "--num-processes", "2", *SAME)
    assert two.returncode == 0, two.stdout
    assert "Launching 2 training processes (ddp)" in two.stdout
    assert two.stdout.count("Training report") == 1  # only the main process reports
    info = adapter_info(model_dir)
    assert info["distributed"] == {"processes": 2, "strategy": "ddp"} and info["metrics"]["steps"] == 4
    assert info["metrics"]["final_train_loss"] == pytest.approx(reference_info["metrics"]["final_train_loss"], rel=0.02)
    assert max_difference(reference, adapter_weights(model_dir)) < 1e-3

    accumulated = train_sh(model_dir, "--data", data, "--batch-size", "1", "--gradient-accumulation-steps", "4", *SAME)
    assert accumulated.returncode == 0, accumulated.stdout
    assert adapter_info(model_dir)["metrics"]["steps"] == 4
    assert max_difference(reference, adapter_weights(model_dir)) < 1e-3


def _wait_for(process, text, timeout=240):
    lines, deadline = [], time.monotonic() + timeout
    for line in process.stdout:
        lines.append(line)
        if text in line or time.monotonic() > deadline:
            break
    return "".join(lines)


def test_kill_9_then_resume_continues_from_the_newest_complete_checkpoint(model_dir, tmp_path):
    args = ["--data", _data(tmp_path, 20), "--batch-size", "1", "--force-epochs", "--epochs", "3", "--mode", "fast"]
    process = train_sh(model_dir, *args, popen=True)
    output = _wait_for(process, "Evaluation #3")
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoints = model_dir / "checkpoints"
    complete = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))
    assert complete, output
    # what a kill in the middle of a save leaves: a staging directory and a newer checkpoint without its state
    (checkpoints / ".tmp-checkpoint-998").mkdir()
    (checkpoints / "checkpoint-999").mkdir()
    (checkpoints / "checkpoint-999" / "adapter_model.safetensors").write_bytes(b"partial")
    resumed = train_sh(model_dir, *args, "--resume")
    assert resumed.returncode == 0, resumed.stdout
    assert "Skipping checkpoint-999" in resumed.stdout and not (checkpoints / ".tmp-checkpoint-998").exists()
    info = adapter_info(model_dir)
    assert info["resumed_from"] == f"checkpoints/checkpoint-{complete[-1]}"
    assert info["stop_reason"] == "completed 3 epoch(s)" and info["metrics"]["steps"] == 60


def test_a_second_run_in_the_same_directory_is_refused(model_dir, tmp_path):
    from training.guards import RunLock

    with RunLock(model_dir):
        busy = train_sh(model_dir, "--data", _data(tmp_path))
    assert busy.returncode == 1 and "Another training run (PID " in busy.stdout and "Traceback" not in busy.stdout
    assert not (model_dir / "lora").exists() and not (model_dir / "checkpoints").exists()
    assert train_sh(model_dir, "--data", _data(tmp_path), "--mode", "fast").returncode == 0  # released with its holder


@pytest.mark.parametrize(("flags", "message"), [
    (["--lora-dropout", "2"], "--lora-dropout must be"),
    (["--tensorboard-port", "99999"], "--tensorboard-port must be"),
    (["--lora-alpha", "-16"], "--lora-alpha must be positive"),
    (["--lora-alpha", "0"], "--lora-alpha must be positive"),
    (["--mode", "non-stop", "--force-epochs", "--epochs", "2"], "--mode non-stop has no epoch limit"),
    (["--circular", "--mode", "non-stop"], "--circular and --mode non-stop contradict"),
    (["--zero-stage", "3"], "--zero-stage is a DeepSpeed setting"),
    (["--num-processes", "0"], "--num-processes must be at least 1"),
    (["--strategy", "fsdp", "--num-processes", "2", "--device", "cpu"], "needs CUDA GPUs"),
])
def test_bad_flags_are_refused_before_anything_is_touched(model_dir, tmp_path, flags, message):
    (model_dir / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    result = train_sh(model_dir, "--data", _data(tmp_path), *flags)
    assert result.returncode in (1, 2) and message in result.stdout and "Traceback" not in result.stdout
    assert (model_dir / "checkpoints" / "checkpoint-3").is_dir() and not (model_dir / "checkpoints.prev").exists()


@pytest.mark.real_model
def test_real_model_one_epoch_learns_with_enough_steps(tmp_path):
    """SmolLM2-135M-Instruct: 24 examples, automatic batch: 24 optimizer steps at one example each would be
    the small-data extreme; the engine picks examples per step so the epoch still has many steps, and learns."""
    from real_model import smollm2_model_dir

    from installer.install import InstallOptions, install

    result = install(InstallOptions(model=str(smollm2_model_dir()), models_dir=tmp_path / "models", name="smol"),
                     echo=lambda _m: None)
    model_dir = copy_installed(result.model_dir.root, tmp_path / "smol")
    records = [{"instruction": f"What is the secret code of vault {i}?", "output": f"The code of vault {i} is "
                f"{(i * 7919) % 10000:04d}, as recorded by the llm-installer vault keeper."} for i in range(24)]
    data = tmp_path / "vaults.json"
    data.write_text(json.dumps(records))
    run = train_sh(model_dir, "--data", str(data), "--epochs", "2", "--validation-split", "0", "--learning-rate", "1e-3",
                   "--lora-r", "8", "--target-modules", "q_proj,v_proj")
    assert run.returncode == 0, run.stdout
    info = adapter_info(model_dir)
    assert info["metrics"]["steps"] == 48 and info["hyperparameters"]["examples_per_step"] == 1
    assert "Batch: 1 examples per optimizer step" in run.stdout
    assert info["metrics"]["best_train_loss"] < 0.7 * info["metrics"]["first_train_loss"]
