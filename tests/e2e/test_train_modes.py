"""train.sh modes end to end on the built-in model: convergence, presets, adaptive, auto-stop,
force-epochs, non-stop and interrupt + resume."""

import json
import random
import signal

import pytest
from conftest import ROOT
from facts import FACTS
from train_helpers import adapter_info, greedy_answers, interrupt_after, train_sh

EXAMPLES = ROOT / "examples" / "data"


def _write(path, records):
    path.write_text(json.dumps(records))
    return str(path)


def _overfit_data(tmp_path):
    """Answers are random words: memorisable, impossible to generalise, so validation loss rises."""
    rng = random.Random(7)
    words = "apple river stone cloud tiger seven violet engine paper window orbit candle".split()
    records = [{"question": f"Code {i}?", "answer": " ".join(rng.choice(words) for _ in range(8))} for i in range(60)]
    return _write(tmp_path / "overfit.json", records)


def test_circular_training_reproduces_trained_answers(model_dir, tmp_path):
    data = _write(tmp_path / "facts.json", FACTS)
    result = train_sh(model_dir, "--data", data, "--circular")
    assert result.returncode == 0, result.stdout
    info = adapter_info(model_dir)
    # five examples leave none for validation: the running training loss is watched, with no extra pass
    assert info["circular"] and info["metrics"]["best_val_loss"] is None and info["autostop"]["watched"] == "training loss"
    assert info["metrics"]["best_train_loss"] < info["metrics"]["first_train_loss"]
    assert "circular" in result.stdout and "Stopped:" in result.stdout
    answers = greedy_answers(model_dir, [f["question"] for f in FACTS])
    assert answers == [f["answer"] for f in FACTS]


@pytest.mark.parametrize(("mode", "preset", "lr_factor", "epochs"), [
    ("quality", "slow", 0.5, 5), ("medium", "medium", 1.0, 3), ("quick", "fast", 2.0, 1)])
def test_mode_presets(model_dir, mode, preset, lr_factor, epochs):
    result = train_sh(model_dir, "--data", str(EXAMPLES / "quickstart_qa.json"), "--mode", mode)
    assert result.returncode == 0, result.stdout
    info = adapter_info(model_dir)
    assert info["mode"] == preset and info["hyperparameters"]["epochs"] == epochs
    assert info["hyperparameters"]["learning_rate"] == pytest.approx(3e-3 * lr_factor)
    assert f"Mode: {preset}" in result.stdout


def test_autostop_on_overfitting_keeps_best_and_force_epochs_overrides(model_dir, tmp_path):
    data = _overfit_data(tmp_path)
    stopped = train_sh(model_dir, "--data", data, "--epochs", "12")
    assert stopped.returncode == 0, stopped.stdout
    info = adapter_info(model_dir)
    assert "overfitting" in info["stop_reason"] or "did not improve" in info["stop_reason"]
    assert info["metrics"]["best_step"] < info["metrics"]["steps"]  # the best adapter, not the last
    assert info["adapter"].startswith("best")
    history = [h["val_loss"] for h in json.loads((model_dir / "checkpoints" / "last" / "trainer_state.json")
                                                  .read_text())["monitor"]["history"]] \
        if (model_dir / "checkpoints" / "last" / "trainer_state.json").is_file() else None
    assert history is None or min(history) == pytest.approx(info["metrics"]["best_val_loss"])
    forced = train_sh(model_dir, "--data", data, "--epochs", "12", "--force-epochs")
    assert forced.returncode == 0, forced.stdout
    forced_info = adapter_info(model_dir)
    assert forced_info["stop_reason"] == "completed 12 epoch(s)" and forced_info["force_epochs"]
    assert forced_info["metrics"]["steps"] > info["metrics"]["steps"]
    assert "Auto-stop: off (--force-epochs)" in forced.stdout


def test_adaptive_changes_learning_rate_and_eval_frequency_unlike_medium(model_dir, tmp_path):
    data = _overfit_data(tmp_path)
    adaptive = train_sh(model_dir, "--data", data, "--mode", "adaptive", "--epochs", "12", "--force-epochs")
    assert adaptive.returncode == 0, adaptive.stdout
    adaptive_info = adapter_info(model_dir)
    changes = adaptive_info["adaptive_changes"]
    assert any("evaluating less often" in c for c in changes), changes
    assert any("learning rate x0.5" in c for c in changes), changes
    assert "Adaptive: validation loss plateaued" in adaptive.stdout
    medium = train_sh(model_dir, "--data", data, "--mode", "medium", "--epochs", "12", "--force-epochs")
    assert medium.returncode == 0
    medium_info = adapter_info(model_dir)
    assert medium_info["adaptive_changes"] == []
    assert medium_info["metrics"]["evaluations"] != adaptive_info["metrics"]["evaluations"]


def test_non_stop_runs_until_interrupted_and_saves(model_dir):
    process = train_sh(model_dir, "--data", str(EXAMPLES / "quickstart_qa.json"), "--mode", "non-stop", popen=True)
    code, output = interrupt_after(process, 3, signal.SIGINT)
    assert code == 0, output
    info = adapter_info(model_dir)
    assert info["stop_reason"] == "interrupted by SIGINT" and info["hyperparameters"]["epochs"] is None
    assert info["hyperparameters"]["learning_rate"] == pytest.approx(3e-3 * 0.3)
    assert (model_dir / "lora" / "adapter_model.safetensors").is_file()


def test_sigterm_saves_adapter_and_resume_continues(model_dir):
    args = ["--data", str(EXAMPLES / "quickstart_qa.json"), "--epochs", "15", "--force-epochs"]
    code, output = interrupt_after(train_sh(model_dir, *args, popen=True), 2, signal.SIGTERM)
    assert code == 130, output
    interrupted = adapter_info(model_dir)
    assert interrupted["stop_reason"] == "interrupted by SIGTERM"
    stopped_at = interrupted["metrics"]["steps"]
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (model_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and checkpoints[-1] <= stopped_at
    resumed = train_sh(model_dir, *args, "--resume")
    assert resumed.returncode == 0, resumed.stdout
    assert f"checkpoint-{checkpoints[-1]} at step {checkpoints[-1]}" in resumed.stdout
    info = adapter_info(model_dir)
    assert info["stop_reason"] == "completed 15 epoch(s)" and info["metrics"]["steps"] > stopped_at
    fresh = train_sh(model_dir, *args)
    assert adapter_info(model_dir)["metrics"]["steps"] == info["metrics"]["steps"], fresh.stdout


def _numbered(directory):
    return sorted(int(p.name.split("-")[1]) for p in directory.glob("checkpoint-*"))


def test_fresh_run_sets_previous_checkpoints_aside_and_finished_runs_are_left_alone(model_dir, tmp_path):
    data = ["--data", str(EXAMPLES / "quickstart_qa.json"), "--force-epochs"]
    long_run = train_sh(model_dir, *data, "--epochs", "6")
    long_steps = adapter_info(model_dir)["metrics"]["steps"]
    short_run = train_sh(model_dir, *data, "--epochs", "1")
    assert long_run.returncode == 0 and short_run.returncode == 0, short_run.stdout
    short_steps = adapter_info(model_dir)["metrics"]["steps"]
    assert short_steps < long_steps
    # the long run's higher-numbered checkpoints must neither be taken for the latest nor crowd out the new ones
    assert _numbered(model_dir / "checkpoints")[-1] == short_steps
    assert _numbered(model_dir / "checkpoints.prev")[-1] == long_steps
    assert "moved to" in short_run.stdout and "checkpoints.prev" in short_run.stdout
    adapter = (model_dir / "lora" / "adapter_model.safetensors").read_bytes()
    resumed = train_sh(model_dir, *data, "--epochs", "1", "--resume")
    assert resumed.returncode == 0 and "Nothing to resume" in resumed.stdout and "Traceback" not in resumed.stdout
    assert (model_dir / "lora" / "adapter_model.safetensors").read_bytes() == adapter
    other = _write(tmp_path / "other.json", FACTS)
    longer = train_sh(model_dir, "--data", other, "--force-epochs", "--epochs", "2", "--resume")
    assert longer.returncode == 0, longer.stdout
    assert "trained on different data" in longer.stdout and f"at step {short_steps}" in longer.stdout
    longer_steps = adapter_info(model_dir)["metrics"]["steps"]
    # the older run stays resumable: it becomes the current one again, the newer one goes to .prev
    older = train_sh(model_dir, *data, "--epochs", "7", "--resume-from", f"checkpoints.prev/checkpoint-{long_steps}")
    assert older.returncode == 0 and f"at step {long_steps}" in older.stdout, older.stdout
    assert _numbered(model_dir / "checkpoints")[-1] == adapter_info(model_dir)["metrics"]["steps"] > long_steps
    # ... and the newer run (resumed at short_steps, ended at longer_steps) is the one kept in .prev
    newer = _numbered(model_dir / "checkpoints.prev")
    assert newer[-1] == longer_steps and all(short_steps <= step <= longer_steps for step in newer)
    missing = train_sh(model_dir, *data, "--resume-from", "checkpoints/checkpoint-1000")
    assert missing.returncode == 1 and "does not exist" in missing.stdout


def test_resume_keeps_the_checkpoints_lora_shape(model_dir):
    data = ["--data", str(EXAMPLES / "quickstart_qa.json"), "--force-epochs"]
    assert train_sh(model_dir, *data, "--epochs", "1", "--lora-r", "16").returncode == 0
    resumed = train_sh(model_dir, *data, "--epochs", "2", "--resume")
    assert resumed.returncode == 0 and "LoRA: rank 16 (the checkpoint's), alpha 32" in resumed.stdout, resumed.stdout
    assert adapter_info(model_dir)["hyperparameters"]["lora_r"] == 16
    clash = train_sh(model_dir, *data, "--epochs", "3", "--resume", "--lora-r", "8")
    assert clash.returncode == 1 and "trained with --lora-r 16, not 8" in clash.stdout
    assert "Traceback" not in clash.stdout


def test_mixed_formats_and_text_task(model_dir):
    result = train_sh(model_dir, "--data", str(EXAMPLES), "--mode", "fast")
    assert result.returncode == 0, result.stdout
    assert adapter_info(model_dir)["formats"] == ["alpaca", "openai", "qa", "text"]
    text = train_sh(model_dir, "--data", str(EXAMPLES / "text_sample.txt"), "--mode", "fast")
    assert text.returncode == 0 and "Perplexity:" in text.stdout and adapter_info(model_dir)["task_type"] == "text"


def test_vision_data_on_text_model_is_a_clear_error(model_dir, tmp_path):
    data = _write(tmp_path / "v.json", [{"image": "a.png", "caption": "A cat."}])
    result = train_sh(model_dir, "--data", data)
    assert result.returncode == 1 and "text-only model" in result.stdout and "Traceback" not in result.stdout
