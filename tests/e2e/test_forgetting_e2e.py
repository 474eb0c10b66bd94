"""Keeping what the model knew, as a user meets it: train.sh builds the general reference once (cached in the model
directory), watches it at every evaluation (log, adapter_info.json, TensorBoard, the plot, the report), stops on
forgetting and keeps the adapter within the threshold, replays general examples with --replay, resumes with the same
reference and zero point, watches DPO runs and two processes; `llm-installer eval` shows domain and general side by
side. On the toy model, and (slow) the real SmolLM2."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import ROOT
from train_helpers import adapter_info, train_sh

QUICKSTART = str(ROOT / "examples" / "data" / "quickstart_qa.json")  # 12 records
CACHE = ".cache/general_reference.json"


def _evaluations(info: dict) -> list[dict]:
    return info["forgetting"]["evaluations"]


def test_a_run_watches_the_general_reference_and_eval_shows_the_trade(model_dir, cli):
    result = subprocess.run([str(model_dir / "train.sh"), "--data", QUICKSTART, "--validation-split", "0.5", "--mode",
                             "fast", "--epochs", "1", "--no-tensorboard"], capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "General reference: the base model's own greedy answers to 16 general prompts" in out and "built in" in out
    assert "Forgetting: the general reference's loss, zero point" in out and "(--max-forgetting)" in out
    assert "| General: +" in out or "| General: -" in out  # every status line shows it
    info = adapter_info(model_dir)
    section = info["forgetting"]
    assert section["watched"] and section["stops"] and section["max_forgetting"] == 1.5
    assert section["zero_loss"] == section["base_loss"] and section["zero_point"] == "the base model"
    assert len(_evaluations(info)) == info["metrics"]["evaluations"] == 5
    assert section["kept"]["step"] == info["metrics"]["best_step"] and section["kept"]["within"]
    assert info["metrics"]["general_loss"] == section["kept"]["general_loss"]
    assert section["cost"]["build_seconds"] > 0 and section["cost"]["evaluations"] == 5
    assert 0 < section["cost"]["share_of_run"] < 1
    assert info["adapter"].startswith(f"best (step {section['kept']['step']}: validation loss")
    assert "general knowledge" in info["adapter"]
    # the end-of-run comparison: domain and general side by side
    general = info["evaluation"]["general"]
    assert general["base"]["loss"] == section["base_loss"] and general["tuned"]["loss"] == section["kept"]["general_loss"]
    assert "general loss" in out and "domain: perplexity" in out and "; general: perplexity" in out
    assert (model_dir / "training_history.png").stat().st_size > 0 and (model_dir / CACHE).is_file()
    events = b"".join(p.read_bytes() for p in (model_dir / "lora" / "logs").rglob("events.out.tfevents.*"))
    assert b"eval/general_loss" in events and b"eval/forgetting" in events

    evaluated = cli("eval", str(model_dir), "--data", QUICKSTART, "--max-examples", "3", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    shown = json.loads(evaluated.stdout)["general"]
    assert shown["reference"] == "cache" and shown["base"]["loss"] == section["base_loss"]  # train.sh's reference
    assert shown["tuned"]["loss"] == pytest.approx(section["kept"]["general_loss"], rel=1e-4)
    table = cli("eval", str(model_dir), "--data", QUICKSTART, "--max-examples", "3").output
    assert "general loss" in table and "domain: perplexity" in table and "(loss " in table
    skipped = json.loads(cli("eval", str(model_dir), "--data", QUICKSTART, "--max-examples", "3", "--json",
                             "--no-general").stdout)
    assert "general" not in skipped


def test_replay_is_mixed_in_and_a_resume_keeps_the_reference_and_its_zero_point(model_dir):
    args = ["--data", QUICKSTART, "--validation-split", "0.5", "--mode", "fast", "--force-epochs", "--replay", "0.3"]
    dry = subprocess.run([str(model_dir / "train.sh"), *args, "--epochs", "1", "--dry-run", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["general_reference"] == {
        "watched": True, "prompts": 16, "max_new_tokens": 32, "max_forgetting": 1.5, "stops": False,
        "replay_per_epoch": 3}  # 0.3 x 7 training examples / 0.7 (--force-epochs: measured, never stops)
    first = train_sh(model_dir, *args, "--epochs", "1")
    assert first.returncode == 0, first.stdout
    assert "Mix: general replay (the base model's answers to 72 general prompts, --replay 0.3): 72 examples, never " \
           "validated; 3 per epoch = 30.0% of each epoch." in first.stdout
    assert "measured, never stops (--force-epochs)" in first.stdout
    info = adapter_info(model_dir)
    # the stop off, the reference is measured at the first and the last evaluation (a tenth of the training's cost)
    assert [e["step"] for e in _evaluations(info)] == [2, info["metrics"]["steps"]]
    replay = [share for share in info["mix"] if share["replay"]]
    assert replay and replay[0]["per_epoch"] == 3 and replay[0]["validation"] == 0
    assert info["forgetting"]["reference"]["replay_prompts"] == 72 and not info["forgetting"]["stops"]

    (model_dir / CACHE).unlink()  # the checkpoint carries the reference: nothing is built again
    resumed = train_sh(model_dir, *args, "--epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stdout
    assert "the one checkpoint-" in resumed.stdout and "built in" not in resumed.stdout
    assert not (model_dir / CACHE).exists()
    again = adapter_info(model_dir)
    assert again["resumed_from"] and again["forgetting"]["zero_loss"] == info["forgetting"]["zero_loss"]
    assert again["forgetting"]["reference"]["origin"] == "checkpoint"
    assert _evaluations(again)[:2] == _evaluations(info) and len(_evaluations(again)) == 4


def test_the_forgetting_stop_keeps_the_last_adapter_within_the_threshold(model_dir):
    args = ["--data", QUICKSTART, "--mode", "fast", "--epochs", "2"]  # no validation set: the training loss is watched
    probe = train_sh(model_dir, *args, "--max-forgetting", "1000")  # the stop on (every evaluation measured), never met
    assert probe.returncode == 0, probe.stdout
    rises = [e["forgetting"] for e in _evaluations(adapter_info(model_dir))]
    # the first evaluation that forgot more than every one before it: a threshold between them stops the same
    # (seeded, deterministic) run there
    stop = next(k for k in range(1, len(rises)) if rises[k] > max(rises[:k]) + 0.001)
    threshold = (max(rises[:stop]) + rises[stop]) / 2
    stopped = train_sh(model_dir, *args, "--max-forgetting", f"{threshold:.6f}")
    assert stopped.returncode == 0, stopped.stdout
    info = adapter_info(model_dir)
    assert info["stop_reason"].startswith("forgetting: the loss on the general reference rose")
    assert info["forgetting"]["stopped"] and len(_evaluations(info)) == stop + 1
    kept = info["forgetting"]["kept"]
    assert kept["within"] and kept["forgetting"] <= threshold and kept["step"] < _evaluations(info)[-1]["step"]
    assert info["adapter"].startswith(f"best (step {kept['step']}: training loss")
    assert "general knowledge within" in info["adapter"] and "Stop reason:      forgetting" in stopped.stdout


def test_a_dpo_run_watches_its_policy_and_replay_is_refused(model_dir, tmp_path):
    pairs = [{"prompt": [{"role": "user", "content": f"Question {i}?"}],
              "chosen": [{"role": "assistant", "content": f"The answer is {i}."}],
              "rejected": [{"role": "assistant", "content": "I do not know."}]} for i in range(6)]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(pairs))
    refused = train_sh(model_dir, "--data", str(data), "--replay", "0.2")
    assert refused.returncode == 1 and "--replay mixes the base model's own answers into SFT training" in refused.stdout
    dpo = train_sh(model_dir, "--data", str(data), "--epochs", "1", "--mode", "fast")
    assert dpo.returncode == 0, dpo.stdout
    info = adapter_info(model_dir)
    assert info["hyperparameters"]["method"] == "dpo" and info["forgetting"]["watched"]
    assert info["forgetting"]["reference"]["rendering"] == "chat" and len(_evaluations(info)) >= 1


def test_two_processes_measure_what_one_does(model_dir, tmp_path):
    same = ["--data", QUICKSTART, "--force-epochs", "--epochs", "1", "--validation-split", "0", "--lora-dropout", "0",
            "--mode", "fast"]
    one = train_sh(model_dir, *same, "--batch-size", "4")
    assert one.returncode == 0, one.stdout
    single = [e["general_loss"] for e in _evaluations(adapter_info(model_dir))]
    two = train_sh(model_dir, *same, "--batch-size", "2", "--device", "cpu", "--num-processes", "2")
    assert two.returncode == 0, two.stdout
    assert two.stdout.count("General reference: the base model's own") == 1  # the main process's log
    assert "read from" in two.stdout  # the cache the first run made, shared by the main process
    assert [e["general_loss"] for e in _evaluations(adapter_info(model_dir))] == pytest.approx(single, rel=1e-3)


@pytest.mark.slow
@pytest.mark.real_model
def test_smollm2_overfitting_the_quickstart_is_stopped_by_forgetting(tmp_path):
    from export_helpers import install_local
    from real_model import smollm2_model_dir

    root = install_local(smollm2_model_dir(), tmp_path / "models", "smollm2")
    result = train_sh(root, "--data", QUICKSTART, "--target-modules", "all-linear", "--learning-rate", "3e-3",
                      "--batch-size", "4", "--epochs", "30")
    assert result.returncode == 0, result.stdout
    info = adapter_info(root)
    assert info["stop_reason"].startswith("forgetting") and info["forgetting"]["kept"]["within"]
    assert info["forgetting"]["kept"]["forgetting"] <= info["forgetting"]["max_forgetting"]
