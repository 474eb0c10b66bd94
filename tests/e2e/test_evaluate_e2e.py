"""`llm-installer eval` and train.sh's end-of-run evaluation: the learned facts, the JSON shape and one-sentence
errors on installed models, and the real model."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
from conftest import ROOT
from facts import FACTS

EXAMPLES = ROOT / "examples" / "data"
METRICS = {"loss", "perplexity", "exact_match", "rouge_l", "bleu", "answers_per_second", "examples"}


def _eval_json(cli, *args):
    result = cli("eval", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_eval_shows_the_learned_facts(tuned_model_dir, tmp_path, cli):
    from training.eval_report import format_table

    data = tmp_path / "facts.json"
    data.write_text(json.dumps(FACTS))
    result = _eval_json(cli, str(tuned_model_dir), "--data", str(data))
    base, tuned = result["base"], result["tuned"]
    assert METRICS <= set(base) and METRICS <= set(tuned)
    assert base["examples"] == tuned["examples"] == len(FACTS)
    assert tuned["exact_match"] >= 0.8 and base["exact_match"] == 0.0
    assert tuned["perplexity"] < base["perplexity"] / 5 and tuned["loss"] < base["loss"]
    assert tuned["rouge_l"] > 0.8 > base["rouge_l"] and tuned["bleu"] > 50 > base["bleu"]
    assert tuned["answers_per_second"] > 0 and result["setup"]["adapter"] == str(tuned_model_dir / "lora")
    table = format_table(result)
    assert table.splitlines()[0].split() == ["base", "tuned", "change"]
    assert "exact match" in table and "pts" in table and "ROUGE-L" in table and "BLEU" in table


def test_eval_errors_are_one_sentence(model_dir, tmp_path, cli):
    good = EXAMPLES / "quickstart_qa.json"
    missing = cli("eval", str(model_dir), "--data", str(good))
    assert missing.exit_code == 1 and "No adapter in" in missing.output and "--no-lora" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    absent = cli("eval", str(model_dir), "--data", str(good), "--adapter", str(tmp_path / "nowhere"))
    assert absent.exit_code == 1 and "no adapter there" in absent.output
    bad = tmp_path / "bad.json"
    bad.write_text('[{"question": "a", "answer": "b"},')
    broken = cli("eval", str(model_dir), "--data", str(bad), "--no-lora")
    assert broken.exit_code == 1 and "malformed JSON" in broken.output
    assert len(broken.output.strip().splitlines()) == 1 and "Traceback" not in broken.output
    nothing = cli("eval", str(model_dir), "--data", str(tmp_path / "none.json"), "--no-lora")
    assert nothing.exit_code == 1 and "Data not found" in nothing.output
    both = cli("eval", str(model_dir), "--data", str(good), "--no-lora", "--no-base")
    assert both.exit_code == 1 and "nothing to evaluate" in both.output


def test_text_data_gets_loss_and_perplexity_only(model_dir, cli):
    result = _eval_json(cli, str(model_dir), "--data", str(EXAMPLES / "text_sample.txt"), "--no-lora",
                        "--max-examples", "3")
    assert set(result) == {"base", "setup"} and result["base"]["examples"] == 3
    assert math.isfinite(result["base"]["perplexity"]) and result["base"]["perplexity"] >= 1
    assert result["base"]["exact_match"] is None and result["base"]["bleu"] is None
    assert "loss and perplexity only" in result["setup"]["note"]
    table = cli("eval", str(model_dir), "--data", str(EXAMPLES / "text_sample.txt"), "--no-lora", "--max-examples", "3")
    assert "perplexity" in table.output and "BLEU" not in table.output and "loss and perplexity only" in table.output


def test_train_sh_evaluates_on_the_validation_set(model_dir):
    result = subprocess.run([str(model_dir / "train.sh"), "--data", str(EXAMPLES / "quickstart_qa.json"),
                             "--validation-split", "0.5", "--mode", "fast", "--no-tensorboard"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    info = json.loads((model_dir / "lora" / "adapter_info.json").read_text())
    evaluation = info["evaluation"]
    assert evaluation["base"]["examples"] == evaluation["tuned"]["examples"] >= 5  # the validation set
    # the same examples, labels and objective as training's validation loss
    assert evaluation["tuned"]["loss"] == pytest.approx(info["metrics"]["best_val_loss"], rel=1e-3)
    assert evaluation["base"]["loss"] == pytest.approx(info["metrics"]["baseline_val_loss"], rel=1e-3)
    assert evaluation["setup"]["validation_examples"] == evaluation["base"]["examples"]
    assert "validation examples" in result.stdout and "exact match" in result.stdout


@pytest.mark.slow
@pytest.mark.real_model
def test_eval_on_smollm2(tmp_path, cli):
    from export_helpers import add_adapter, install_local
    from real_model import smollm2_model_dir

    root = install_local(smollm2_model_dir(), tmp_path / "models", "smollm2")
    add_adapter(root, rank=8)
    result = _eval_json(cli, str(root), "--data", str(EXAMPLES / "quickstart_qa.json"), "--max-examples", "6",
                        "--max-new-tokens", "32")
    base, tuned = result["base"], result["tuned"]
    assert base["examples"] == tuned["examples"] == 6 and result["setup"]["max_new_tokens"] == 32
    assert 1 < base["perplexity"] < 1000 and base["loss"] != pytest.approx(tuned["loss"], rel=1e-3)
    for side in (base, tuned):
        assert 0 <= side["exact_match"] <= 1 and 0 <= side["rouge_l"] <= 1 and 0 <= side["bleu"] <= 100
        assert side["answers_per_second"] > 0
    # an instruction-tuned model answers questions with words of the reference answers
    assert base["rouge_l"] > 0.05
