"""Evaluation in process: metrics against hand-computed values, prompts and references from the training
tokenization, the answer-token loss and the base pass on a tiny model (`llm-installer eval` and train.sh's
evaluation are in tests/e2e/test_evaluate_e2e.py)."""

from __future__ import annotations

import pytest
from conftest import ROOT

from training.data.formats import Example

METRICS = {"loss", "perplexity", "exact_match", "rouge_l", "bleu", "answers_per_second", "examples"}


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


def test_report_says_when_there_is_no_validation_set():
    from training.eval_report import format_run_evaluation

    lines = format_run_evaluation({"skipped": "no validation set"}, ROOT)
    assert len(lines) == 1 and "skipped (no validation set)" in lines[0] and "llm-installer eval" in lines[0]
