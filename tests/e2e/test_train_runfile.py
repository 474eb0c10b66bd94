"""train.sh with run files and weighted mixes end to end: `--config run.yaml` trains the same adapter as the
flags, `--config lora/run.yaml` repeats it from a moved model directory, a 3:1 mix trains on its shares, and a
bad run file fails with one sentence before anything is touched."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from conftest import copy_installed
from facts import FACTS
from train_helpers import adapter_info, adapter_weights, max_difference, train_sh

SAME = ["--force-epochs", "--epochs", "1", "--lora-dropout", "0", "--batch-size", "4", "--validation-split", "0.2",
        "--mode", "slow"]  # one evaluation per epoch: the token cap leaves 20% of each entry for validation


def _two_sets(directory):
    directory.mkdir()
    chat = [{"question": f"A{i}: {f['question']}", "answer": f["answer"]} for i, f in enumerate(FACTS * 3)]
    docs = [{"question": f"B{i}: {f['question']}", "answer": f["answer"][::-1]} for i, f in enumerate(FACTS * 3)]
    (directory / "chat.json").write_text(json.dumps(chat))
    (directory / "docs.json").write_text(json.dumps(docs))


def test_a_run_file_and_its_saved_copy_repeat_the_flags_run_on_a_3_to_1_mix(model_dir, tmp_path):
    data = model_dir / "data"
    _two_sets(data)
    flags = train_sh(model_dir, "--data", f"{data}/chat.json@3,{data}/docs.json", "--learning-rate", "1e-2", *SAME)
    assert flags.returncode == 0, flags.stdout
    info, reference = adapter_info(model_dir), adapter_weights(model_dir)
    # 15 examples each, 3 of each held out for validation: 12 x 3 + 12 per epoch, 4 per step
    assert "Mix: " + f"{data}/chat.json x3: 15 examples, 3 held out for validation; 36 per epoch = 75.0% of each epoch." \
        in flags.stdout
    assert [(m["validation"], m["per_epoch"], m["share"]) for m in info["mix"]] == [(3, 36, 0.75), (3, 12, 0.25)]
    assert info["metrics"]["steps"] == 12 and [d["weight"] for d in info["data"]] == [3, 1]
    saved = yaml.safe_load((model_dir / "lora" / "run.yaml").read_text())
    assert saved == info["config"] and saved["data"] == [{"path": "../data/chat.json", "weight": 3},
                                                         {"path": "../data/docs.json", "weight": 1}]

    run_file = tmp_path / "runs" / "run.yaml"
    run_file.parent.mkdir()
    run_file.write_text(yaml.safe_dump({
        "data": [{"path": "../m/data/chat.json", "weight": 3}, "../m/data/docs.json"], "force_epochs": True,
        "epochs": 1, "lora-dropout": 0, "batch-size": 4, "validation_split": 0.2, "learning-rate": 0.5,
        "mode": "slow"}))
    from_file = train_sh(model_dir, "--config", str(run_file), "--learning-rate", "1e-2")  # the flag overrides 0.5
    assert from_file.returncode == 0, from_file.stdout
    assert max_difference(reference, adapter_weights(model_dir)) < 1e-6
    assert adapter_info(model_dir)["metrics"]["final_train_loss"] == pytest.approx(info["metrics"]["final_train_loss"])

    moved = copy_installed(model_dir, tmp_path / "moved")
    shutil.rmtree(data)  # the saved run file must find the moved directory's data, not the old path
    repeat = train_sh(moved, "--config", str(moved / "lora" / "run.yaml"))
    assert repeat.returncode == 0, repeat.stdout
    assert max_difference(reference, adapter_weights(moved)) < 1e-6
    assert adapter_info(moved)["data"][0]["source"].startswith(str(moved))


def test_a_bad_run_file_is_one_sentence_before_anything_is_touched(model_dir, tmp_path):
    (model_dir / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    run_file = tmp_path / "run.yaml"
    run_file.write_text("data: facts.json\nlearning-rat: 1e-3\n")
    result = train_sh(model_dir, "--config", str(run_file))
    assert result.returncode == 2 and "Traceback" not in result.stdout
    assert f"Error: {run_file}: unknown key 'learning-rat'; did you mean 'learning-rate'?" in result.stdout
    assert (model_dir / "checkpoints" / "checkpoint-3").is_dir() and not (model_dir / "lora").exists()
