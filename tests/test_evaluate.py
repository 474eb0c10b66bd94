"""`llm-installer eval` and train.sh's end-of-run evaluation: metrics against hand-computed values, the
answer-token loss, the learned facts, the JSON shape and one-sentence errors."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
from conftest import ROOT
from facts import FACTS

from training.data.formats import Example

EXAMPLES = ROOT / "examples" / "data"
METRICS = {"loss", "perplexity", "exact_match", "rouge_l", "bleu", "answers_per_second", "examples"}


def _eval_json(cli, *args):
    result = cli("eval", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- metrics ----------------------------------------------------------------------------------------------------


def test_identical_answers_score_perfectly():
    from training.text_metrics import answer_metrics

    answers = ["Paris.", "The mascot is a small owl named Pip.", "Die Katze schläft."]
    scores = answer_metrics(answers, list(answers))
    assert scores["exact_match"] == 1.0 and scores["rouge_l"] == 1.0
    assert scores["bleu"] == pytest.approx(100.0)


def test_metrics_match_hand_computed_values():
    from training.text_metrics import bleu, exact_match, normalise, rouge_l

    # whitespace is normalised (ends trimmed, runs collapsed); case and punctuation count
    assert normalise("  The   cat\n sat. ") == "The cat sat."
    assert exact_match(["the  cat\tsat ", "The cat sat", "the cat sat."], ["the cat sat"] * 3) == pytest.approx(1 / 3)
    # LCS 3 words: precision 3/3, recall 3/6, F = 2 * 1 * 0.5 / 1.5
    assert rouge_l(["the cat sat"], ["the cat sat on the mat"]) == pytest.approx(2 / 3)
    # words of any script count (rouge-score's own tokenizer would see no words here)
    assert rouge_l(["привет мир"], ["привет мир"]) == 1.0
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty)
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(expected)
    assert bleu(["something else entirely"], ["the cat sat on a mat"]) == 0.0


# --- the engine on a tiny model ----------------------------------------------------------------------------------


def _tiny(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from training.modeling import load_tokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir), dtype=torch.float32).eval(), \
        load_tokenizer(tiny_llama_dir)


def test_prompts_and_references_come_from_the_training_tokenization(tiny_llama_dir):
    from training.evaluate import prepare

    _model, tokenizer = _tiny(tiny_llama_dir)
    chat = Example("qa", "x", 0, messages=[{"role": "user", "content": "What is two?"},
                                           {"role": "assistant", "content": "Two is a number."}])
    completion = Example("completion", "x", 1, prompt="Question: one plus one?\nAnswer:", completion=" two")
    text = Example("text", "x", 2, completion="The quick brown fox.")
    data = prepare(tokenizer, [chat, completion, text], 256)
    first, second, third = data.items
    assert tokenizer.decode(first.prompt_ids).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(first.answer_ids, skip_special_tokens=True).strip() == "Two is a number."
    assert tokenizer.decode(second.prompt_ids) + tokenizer.decode(second.answer_ids, skip_special_tokens=True) == \
        "Question: one plus one?\nAnswer: two"
    assert third.prompt_ids is None and len(data.answered) == 2


def test_loss_is_token_weighted_over_the_answer_tokens(tiny_llama_dir):
    import torch

    from training.evaluate import answer_loss, prepare

    model, tokenizer = _tiny(tiny_llama_dir)
    examples = [Example("completion", "x", i, prompt=f"Count {i}:", completion=" one two three" * (i + 1))
                for i in range(4)]
    data = prepare(tokenizer, examples, 256)
    total, count = answer_loss(model, data, tokenizer.pad_token_id, "cpu")
    by_hand, tokens = 0.0, 0
    for item in data.items:  # one example at a time, no packing: the sum over every labelled token
        ids = torch.tensor([item.tokenized.input_ids])
        labels = torch.tensor(item.tokenized.labels[1:])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        mask = labels != -100
        by_hand += float(torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum"))
        tokens += int(mask.sum())
    assert count == tokens and total / count == pytest.approx(by_hand / tokens, rel=1e-4)


def test_base_pass_switches_the_adapter_off(tiny_llama_dir):
    """compare() on a PEFT model: the base side equals the plain model, the tuned side differs."""
    from peft import LoraConfig, get_peft_model

    from training.evaluate import compare, prepare

    model, tokenizer = _tiny(tiny_llama_dir)
    examples = [Example("qa", "x", 0, messages=[{"role": "user", "content": f"Say {w}."},
                                                {"role": "assistant", "content": f"{w} {w}."}]) for w in ("one", "two")]
    data = prepare(tokenizer, examples, 256)
    plain = compare(model, tokenizer, data, tuned=False, max_new_tokens=4)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    both = compare(peft, tokenizer, data, max_new_tokens=4)
    assert both["base"]["loss"] == pytest.approx(plain["base"]["loss"], rel=1e-5)
    assert both["tuned"]["loss"] != pytest.approx(both["base"]["loss"], rel=1e-3)
    assert set(both) == {"base", "tuned", "setup"} and METRICS <= set(both["tuned"])


# --- the command ----------------------------------------------------------------------------------------------


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_text_data_gets_loss_and_perplexity_only(model_dir, cli):
    result = _eval_json(cli, str(model_dir), "--data", str(EXAMPLES / "text_sample.txt"), "--no-lora",
                        "--max-examples", "3")
    assert set(result) == {"base", "setup"} and result["base"]["examples"] == 3
    assert math.isfinite(result["base"]["perplexity"]) and result["base"]["perplexity"] >= 1
    assert result["base"]["exact_match"] is None and result["base"]["bleu"] is None
    assert "loss and perplexity only" in result["setup"]["note"]
    table = cli("eval", str(model_dir), "--data", str(EXAMPLES / "text_sample.txt"), "--no-lora", "--max-examples", "3")
    assert "perplexity" in table.output and "BLEU" not in table.output and "loss and perplexity only" in table.output


@pytest.mark.e2e
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


def test_report_says_when_there_is_no_validation_set():
    from training.eval_report import format_run_evaluation

    lines = format_run_evaluation({"skipped": "no validation set"}, ROOT)
    assert len(lines) == 1 and "skipped (no validation set)" in lines[0] and "llm-installer eval" in lines[0]


# --- the real model -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.e2e
def test_eval_on_smollm2(tmp_path, cli):
    from real_model import smollm2_model_dir
    from test_export import add_adapter, install_local

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
