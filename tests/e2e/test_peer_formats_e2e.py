"""Peer-format data trained end to end through train.sh: KTO from labelled answers (LLaMA-Factory's kto_tag,
TRL's unpaired preference) moves the model toward the desirable answers and away from the undesirable ones;
the mode line says what --epochs will do and an epoch evaluates once per point."""

from __future__ import annotations

import json

import pytest
from train_helpers import adapter_info, greedy_answers, train_sh

QUESTIONS = [("Who is the mascot?", "The mascot is an owl.", "The mascot is a cat."),
             ("What colour is the logo?", "The logo is teal.", "The logo is grey."),
             ("Which port does the demo use?", "The demo uses port 8000.", "The demo uses port 1234.")]


@pytest.mark.slow  # 95 s on 2 cores; KTO end to end stays in the default run through the resume test below
def test_sft_then_kto_from_the_adapter_replaces_the_undesirable_answers_with_desirable_ones(model_dir, tmp_path):
    sft = [{"question": q, "answer": a} for q, good, bad in QUESTIONS for a in (bad, bad, good)]  # wrong one 2:1
    # LLaMA-Factory's kto_en_demo shape: messages with the answer last, and a boolean label
    labelled = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}],
                 "label": answer == good} for q, good, bad in QUESTIONS for answer in (good, bad)]
    labelled.append({"messages": [{"role": "user", "content": "Anything?"}, {"role": "assistant", "content": ""}],
                     "label": True})  # an empty answer: skipped and counted, not an error for the whole file
    (tmp_path / "sft.json").write_text(json.dumps(sft))
    (tmp_path / "kto.json").write_text(json.dumps(labelled))
    first = train_sh(model_dir, "--data", str(tmp_path / "sft.json"), "--epochs", "15", "--force-epochs")
    assert first.returncode == 0, first.stdout
    questions = [q for q, _, _ in QUESTIONS]
    assert greedy_answers(model_dir, questions) == [bad for _, _, bad in QUESTIONS]  # the 2:1 majority

    kto = train_sh(model_dir, "--data", str(tmp_path / "kto.json"), "--from-adapter", "./lora", "--epochs", "8",
                   "--force-epochs", "--validation-split", "0")
    assert kto.returncode == 0, kto.stdout
    assert "training with KTO (--method kto)" in kto.stdout
    assert "KTO: beta 0.1, 3 desirable and 3 undesirable answers" in kto.stdout
    mode = next(line for line in kto.stdout.splitlines() if line.startswith("Mode: "))
    assert "Up to 8 epochs (--epochs)" in mode and "3 epochs" not in mode  # one sentence of what will happen
    # every undesirable answer is gone, and the model answers with desirable ones (the toy model, a million
    # parameters, may give one question another question's desirable answer)
    answers = greedy_answers(model_dir, questions)
    assert set(answers) <= {good for _, good, _ in QUESTIONS} and answers[0] == QUESTIONS[0][1]
    info = adapter_info(model_dir)
    assert info["hyperparameters"]["method"] == "kto" and info["kto"]["final"]["reward"] > 0
    assert info["skipped_records"]["count"] == 1 and info["skipped_records"]["first"][0]["record"] == 7
    evaluated = [line.split("| Step ")[1].split(" ")[0] for line in kto.stdout.splitlines()
                 if line.startswith("Evaluation #")]
    assert evaluated and len(evaluated) == len(set(evaluated))  # one evaluation per point, none twice at an end


def test_a_kto_run_resumes_against_the_adapter_it_started_from(model_dir, tmp_path):
    import signal

    from train_helpers import interrupt_after, losses_across_resume, random_adapter


    labelled = [{"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}],
                 "label": a == good} for q, good, bad in QUESTIONS for a in (good, bad)]  # TRL's unpaired shape
    (tmp_path / "kto.jsonl").write_text("\n".join(json.dumps(r) for r in labelled))
    random_adapter(model_dir, model_dir / "lora")
    args = ["--data", str(tmp_path / "kto.jsonl"), "--from-adapter", "./lora", "--epochs", "15", "--force-epochs",
            "--batch-size", "6", "--lora-dropout", "0", "--learning-rate", "1e-3", "--kto-beta", "2",
            "--validation-split", "0"]
    code, output = interrupt_after(train_sh(model_dir, *args, popen=True), 3, signal.SIGTERM)
    assert code == 130, output
    resumed = train_sh(model_dir, *args, "--resume")
    assert resumed.returncode == 0, resumed.stdout
    assert "KTO reference: the starting adapter (checkpoints/reference)" in resumed.stdout
    info = adapter_info(model_dir)
    assert info["resumed_from"] and info["kto"]["reference"] == "the starting adapter (checkpoints/reference)"
    losses, resumed_at = losses_across_resume(model_dir, info)
    # full-batch steps lower the loss across the resume: a reference recomputed from the current weights would
    # restart it at 0.5, one from the base (far from the random starting adapter) would make it jump
    assert all(losses[step + 1] < losses[step] for step in range(1, resumed_at + 1)), (losses, resumed_at)
