"""DPO end to end through train.sh: SFT on the wrong answers then DPO from that adapter, resume against the
starting adapter, the real model and two processes (slow)."""

from __future__ import annotations

import json
import signal

import pytest
from train_helpers import adapter_info, greedy_answers, interrupt_after, losses_across_resume, random_adapter, train_sh

# --- end to end: SFT on the wrong answers, then DPO from that adapter ---------------------------------
QUESTIONS = [("Who is the mascot?", "The mascot is an owl.", "The mascot is a cat."),
             ("What colour is the logo?", "The logo is teal.", "The logo is grey."),
             ("Which port does the demo use?", "The demo uses port 8000.", "The demo uses port 1234.")]


def _sft_then_dpo_data(tmp_path):
    sft = [{"question": q, "answer": a} for q, good, bad in QUESTIONS for a in (bad, bad, good)]  # wrong one 2:1
    pairs = [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": good}],
              "rejected": [{"role": "assistant", "content": bad}]} for q, good, bad in QUESTIONS]
    (tmp_path / "sft.json").write_text(json.dumps(sft))
    (tmp_path / "prefs.json").write_text(json.dumps(pairs))
    return str(tmp_path / "sft.json"), str(tmp_path / "prefs.json")


def test_sft_then_dpo_from_the_adapter_switches_greedy_answers_to_the_chosen_ones(model_dir, tmp_path):
    from safetensors.torch import load_file

    sft_data, dpo_data = _sft_then_dpo_data(tmp_path)
    questions = [q for q, _, _ in QUESTIONS]
    # this toy's answers switch with dropout's noise; without it DPO overshoots into broken text (measured)
    sft = train_sh(model_dir, "--data", sft_data, "--epochs", "15", "--force-epochs", "--lora-dropout", "0.05")
    assert sft.returncode == 0, sft.stdout
    assert greedy_answers(model_dir, questions) == [bad for _, _, bad in QUESTIONS]  # the 2:1 majority
    sft_weights = load_file(str(model_dir / "lora" / "adapter_model.safetensors"))

    # the default learning rate of a preference run is a third of SFT's (3e-3 for this small model)
    dpo = train_sh(model_dir, "--data", dpo_data, "--from-adapter", "./lora", "--epochs", "8", "--force-epochs",
                   "--lora-dropout", "0.05")
    assert dpo.returncode == 0, dpo.stdout
    assert "learning rate 1.00e-03" in dpo.stdout
    assert "training with DPO (--method dpo)" in dpo.stdout and "Starting from the adapter in" in dpo.stdout
    assert greedy_answers(model_dir, questions) == [good for _, good, _ in QUESTIONS]
    info = adapter_info(model_dir)
    assert info["task_type"] == "preference" and info["hyperparameters"]["method"] == "dpo"
    kept = info["preference"]["best"]
    assert kept["reward_accuracy"] == 1.0 and kept["reward_margin"] > 0 and kept["reward_chosen"] > kept["reward_rejected"]
    assert "Rewards (kept):   accuracy 100%" in dpo.stdout
    events = b"".join(path.read_bytes() for path in (model_dir / "lora" / "logs").rglob("events.out.tfevents.*"))
    assert all(tag in events for tag in (b"train/reward_accuracy", b"train/reward_margin", b"train/reward_chosen"))
    # the SFT adapter is kept in lora.prev and, for a resume, in checkpoints/reference
    for kept_dir in (model_dir / "lora.prev", model_dir / "checkpoints" / "reference"):
        weights = load_file(str(kept_dir / "adapter_model.safetensors"))
        assert all(bool((weights[k] == v).all()) for k, v in sft_weights.items())


def test_a_dpo_run_resumes_against_the_adapter_it_started_from(model_dir, tmp_path):

    _, dpo_data = _sft_then_dpo_data(tmp_path)
    random_adapter(model_dir, model_dir / "lora")
    # every step on all three pairs, no dropout: consecutive steps lower the loss
    args = ["--data", dpo_data, "--from-adapter", "./lora", "--epochs", "15", "--force-epochs", "--batch-size", "3",
            "--lora-dropout", "0", "--learning-rate", "1e-3", "--dpo-beta", "2"]
    code, output = interrupt_after(train_sh(model_dir, *args, popen=True), 3, signal.SIGTERM)
    assert code == 130, output
    assert (model_dir / "lora.prev" / "adapter_config.json").is_file()  # ./lora is the interrupted DPO adapter now
    resumed = train_sh(model_dir, *args, "--resume")
    assert resumed.returncode == 0, resumed.stdout
    assert "DPO reference: the starting adapter (checkpoints/reference)" in resumed.stdout
    info = adapter_info(model_dir)
    assert info["resumed_from"] and info["preference"]["reference"] == "the starting adapter (checkpoints/reference)"
    losses, resumed_at = losses_across_resume(model_dir, info)
    # full-batch steps lower the loss step after step, across the resume too: had the reference become the
    # current weights it would start again at ln 2, had it become the base (far from the random starting
    # adapter; beta 2 magnifies the difference) it would jump
    assert all(losses[step + 1] < losses[step] for step in range(1, resumed_at + 1)), (losses, resumed_at)


@pytest.mark.slow
@pytest.mark.real_model
def test_real_model_dpo_prefers_the_chosen_answers(tmp_path):
    """SmolLM2-135M-Instruct: a few DPO epochs on 12 pairs (answer vs refusal) through train.sh."""
    from conftest import copy_installed
    from real_model import smollm2_model_dir

    from installer.install import InstallOptions, install

    result = install(InstallOptions(model=str(smollm2_model_dir()), models_dir=tmp_path / "models", name="smol"),
                     echo=lambda _m: None)
    model_dir = copy_installed(result.model_dir.root, tmp_path / "smol")
    pairs = [{"prompt": [{"role": "user", "content": f"What is the code of vault {i}?"}],
              "chosen": [{"role": "assistant", "content": f"The code of vault {i} is {(i * 7919) % 10000:04d}."}],
              "rejected": [{"role": "assistant", "content": "I cannot tell you that."}]} for i in range(12)]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(pairs))
    run = train_sh(model_dir, "--data", str(data), "--epochs", "3", "--force-epochs", "--batch-size", "4",
                   "--lora-dropout", "0", "--lora-r", "8", "--target-modules", "q_proj,v_proj", "--learning-rate", "5e-4")
    assert run.returncode == 0, run.stdout
    info = adapter_info(model_dir)
    assert info["task_type"] == "preference" and info["metrics"]["steps"] == 9
    assert info["metrics"]["first_train_loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at first
    kept = info["preference"]["best"]
    assert kept["reward_accuracy"] == 1.0 and kept["reward_margin"] > 0.1
    assert info["metrics"]["best_train_loss"] < 0.6


@pytest.mark.slow
def test_two_processes_train_dpo_like_one(model_dir, tmp_path):
    """The pair-weighted step and the reference pass, shared out over 2 CPU processes, give the same adapter."""
    from safetensors.torch import load_file

    _, dpo_data = _sft_then_dpo_data(tmp_path)
    same = ["--data", dpo_data, "--force-epochs", "--epochs", "2", "--validation-split", "0", "--lora-dropout", "0",
            "--learning-rate", "1e-2", "--device", "cpu"]
    assert train_sh(model_dir, *same, "--batch-size", "2").returncode == 0
    one = load_file(str(model_dir / "lora" / "adapter_model.safetensors"))
    two = train_sh(model_dir, *same, "--batch-size", "1", "--num-processes", "2")
    assert two.returncode == 0, two.stdout
    other = load_file(str(model_dir / "lora" / "adapter_model.safetensors"))
    assert max(float((one[k] - other[k]).abs().max()) for k in one) < 1e-3 < max(float(v.abs().max()) for v in one.values())
