"""KTO: the labelled-answer format, the objective's choice and refusals, the loss against TRL's KTOTrainer on
fixed tensors, the KL sequences, and that an undesirable answer never becomes an SFT target (end to end:
tests/e2e/test_peer_formats_e2e.py)."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest

from training.config import TrainConfig
from training.data.formats import examples_from_source
from training.data.sources import DataError, SourceRecords

USER = {"role": "user", "content": "What colour is the sky?"}
BLUE = {"role": "assistant", "content": "It is blue."}
GREEN = {"role": "assistant", "content": "It is green."}


def _examples(*records, origin="kto.json", forced=None):
    return examples_from_source(SourceRecords(origin, list(records)), forced)


# --- the format ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("record", "label", "prompt", "answer"), [
    ({"messages": [USER, BLUE], "label": True}, True, [USER], [BLUE]),  # LLaMA-Factory kto_en_demo
    ({"messages": [USER, GREEN], "label": False}, False, [USER], [GREEN]),
    ({"conversations": [{"from": "human", "value": USER["content"]}, {"from": "gpt", "value": "It is blue."}],
      "kto_tag": "false"}, False, [USER], [BLUE]),
    ({"prompt": [USER], "completion": [GREEN], "label": True}, True, [USER], [GREEN]),  # TRL conversational
])
def test_labelled_chat_records_are_kto_with_the_last_answer_labelled(record, label, prompt, answer):
    [example] = _examples(record)
    assert example.format == "kto" and example.label is label
    assert example.messages == prompt and example.chosen == answer


def test_trl_unpaired_text_records_keep_prompt_and_completion_apart():
    [example] = _examples({"prompt": "The sky is", "completion": " green.", "label": False})
    assert (example.format, example.prompt, example.chosen, example.label) == ("kto", "The sky is", " green.", False)


def test_a_label_that_is_not_a_boolean_is_one_sentence():
    with pytest.raises(DataError, match=r"^kto\.json, record 1: 'label' must be true \(desirable\) or false "
                                        r"\(undesirable\), got 'maybe'\.$"):
        _examples({"messages": [USER, BLUE], "label": "maybe"})


# --- the objective ---------------------------------------------------------------------------------
def test_labelled_data_trains_with_kto_and_never_reaches_sft():
    from training.objectives.dpo import MethodError
    from training.objectives.registry import objective_for

    labelled = _examples({"messages": [USER, BLUE], "label": True}, {"messages": [USER, GREEN], "label": False})
    cfg = TrainConfig(data="x", model_dir="m")
    assert objective_for(cfg, labelled, False).name == "kto" and cfg.method == "kto"
    with pytest.raises(MethodError, match=r"^--method dpo trains on chosen/rejected pairs, but kto\.json holds"):
        objective_for(TrainConfig(data="x", model_dir="m", method="dpo"), labelled, False)
    chat = _examples({"messages": [USER, BLUE]}, origin="chat.json")
    with pytest.raises(MethodError, match=r"^chat\.json is in openai format while kto\.json holds labelled"):
        objective_for(TrainConfig(data="x", model_dir="m"), chat + labelled, False)
    with pytest.raises(MethodError, match=r"^--method kto trains on labelled answers .* chat\.json is in openai"):
        objective_for(TrainConfig(data="x", model_dir="m", method="kto"), chat, False)
    with pytest.raises(MethodError, match=r"^KTO is for text-only models"):
        objective_for(TrainConfig(data="x", model_dir="m"), labelled, True)


def test_forcing_a_chat_format_on_an_undesirable_record_is_refused():
    with pytest.raises(DataError, match=r"^kto\.json, record 2: labelled undesirable \(label false\), so openai "
                                        r"format would train it as a target; use --dataset-format kto"):
        _examples({"messages": [USER, BLUE], "label": True}, {"messages": [USER, GREEN], "label": False},
                  forced="openai")


def test_an_undesirable_example_that_reaches_sft_tokenization_is_refused(tiny_llama_dir):
    from transformers import AutoTokenizer

    from training.data.tokenize import tokenize_example, tokenize_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    [bad] = _examples({"messages": [USER, GREEN], "label": False})
    for tokenize in (lambda: tokenize_example(tokenizer, bad, 128), lambda: tokenize_examples(tokenizer, [bad], 128)):
        with pytest.raises(DataError, match=r"record 1: an undesirable \(label false\) example cannot be trained"):
            tokenize()


def test_each_answer_gets_a_kl_sequence_of_its_prompt_with_the_previous_answer(tiny_llama_dir):
    from transformers import AutoTokenizer

    from training.objectives.kto import tokenize_labelled

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    examples = _examples({"prompt": "The sky is", "completion": " blue.", "label": True},
                         {"prompt": "Fire is", "completion": " cold and wet.", "label": False})
    kept, answers = tokenize_labelled(tokenizer, examples, 128)
    assert kept == examples and [a.desirable for a in answers] == [True, False]

    def trained(sequence):
        return tokenizer.decode([t for t in sequence.labels if t != -100])

    def whole(sequence):
        return tokenizer.decode(sequence.input_ids)

    assert trained(answers[0].chosen).startswith(" blue.") and "sky" not in trained(answers[0].chosen)
    assert whole(answers[0].rejected).startswith("The sky is cold and wet.")  # prompt 1, answer 2
    assert whole(answers[1].rejected).startswith("Fire is blue.")  # prompt 2, answer 1
    assert trained(answers[1].rejected).startswith(" blue.")


def test_an_answer_cut_off_by_the_sequence_length_is_skipped_or_refused(tiny_llama_dir):
    from transformers import AutoTokenizer

    from training.objectives.kto import tokenize_labelled

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    examples = _examples({"prompt": "short", "completion": " yes.", "label": True},
                         {"prompt": "a very long prompt " * 20, "completion": " no.", "label": False})
    skipped: list = []
    kept, answers = tokenize_labelled(tokenizer, examples, 16, skipped)
    assert kept == examples[:1] and len(answers) == 1
    assert [(e.index, why) for e, why in skipped] == [(1, "answer cut off by --max-seq-length")]
    with pytest.raises(DataError, match=r"^1 example\(s\) whose answer was cut off entirely by the sequence length "
                                        r"limit \(16 tokens, --max-seq-length\), first: kto\.json record 2"):
        tokenize_labelled(tokenizer, examples, 16)


# --- the loss against TRL's ---------------------------------------------------------------------------
def _trl_kto_loss(policy, policy_kl, reference, reference_kl, labels, beta, desirable_weight, undesirable_weight):
    """TRL's KTOTrainer._compute_loss (loss_type "kto", precomputed reference) on these sequence log-probs: a
    stand-in model returns per-token log-probs summing to them, for the answers and for the KL sequences."""
    import torch
    from trl import KTOTrainer

    n, length = policy.shape[0], 4

    def outputs_for(values):
        per_token = torch.zeros(n, length - 1)
        per_token[:, -1] = values  # one answer token carries the whole sum
        return SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                               mean_logits=torch.zeros_like(per_token))

    def model_call(self, input_ids, **_kw):
        return outputs_for(policy_kl if bool((input_ids == 2).all()) else policy)  # KL ids are all 2s

    model = type("StandIn", (), {"training": True, "__call__": model_call})()
    accelerator = SimpleNamespace(device="cpu", gather_for_metrics=lambda t: t)
    trainer = SimpleNamespace(model=model, accelerator=accelerator, precompute_ref_logps=True, calculate_KL=True,
                              beta=beta, loss_type="kto", desirable_weight=desirable_weight,
                              undesirable_weight=undesirable_weight, aux_loss_enabled=False,
                              _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    trainer._compute_kl_logps = lambda m, batch: KTOTrainer._compute_kl_logps(trainer, m, batch)
    completion = torch.zeros(n, length, dtype=torch.long)
    completion[:, -1] = 1
    inputs = {"input_ids": torch.ones(n, length, dtype=torch.long), "attention_mask": torch.ones(n, length),
              "completion_mask": completion, "KL_input_ids": torch.full((n, length), 2),
              "KL_attention_mask": torch.ones(n, length), "KL_completion_mask": completion,
              "label": labels, "ref_logps": reference, "ref_KL_logps": reference_kl}
    loss = KTOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return float(loss), {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize(("beta", "weights"), [(0.1, (1.0, 1.0)), (0.5, (1.0, 1.33)), (0.2, (0.7, 1.0))])
def test_kto_loss_equals_trls_on_fixed_tensors(beta, weights):
    import torch

    from training.objectives.losses import kto_loss

    policy = torch.tensor([-12.0, -30.5, -7.25, -3.0, -20.0])
    reference = torch.tensor([-13.0, -29.0, -8.0, -3.5, -18.0])
    policy_kl = torch.tensor([-40.0, -35.0, -12.0, -9.0, -25.0])
    reference_kl = torch.tensor([-41.5, -36.0, -12.5, -10.0, -24.0])
    labels = torch.tensor([True, False, True, False, False])
    losses, kl, rewards = kto_loss(policy, policy_kl, reference, reference_kl, labels, beta, *weights)
    expected, metrics = _trl_kto_loss(policy, policy_kl, reference, reference_kl, labels, beta, *weights)
    assert float(losses.mean()) == pytest.approx(expected, rel=1e-6)
    assert float(kl) == pytest.approx(metrics["kl"], rel=1e-6) and float(kl) > 0
    assert float(rewards[labels].mean()) == pytest.approx(metrics["rewards/chosen"], rel=1e-6)
    assert float(rewards[~labels].mean()) == pytest.approx(metrics["rewards/rejected"], rel=1e-6)


def test_kto_loss_by_hand_and_the_kl_floor():
    import torch

    from training.objectives.losses import kto_loss

    # kl = mean(-1, -3) < 0 -> 0; desirable r = +1 -> 1 - sigmoid(0.1); undesirable r = -2 -> 1 - sigmoid(0.2)
    losses, kl, _ = kto_loss(torch.tensor([-9.0, -12.0]), torch.tensor([-5.0, -7.0]), torch.tensor([-10.0, -10.0]),
                             torch.tensor([-4.0, -4.0]), torch.tensor([True, False]), 0.1)
    assert float(kl) == 0.0
    assert losses.tolist() == pytest.approx([1 - torch.sigmoid(torch.tensor(0.1)).item(),
                                             1 - torch.sigmoid(torch.tensor(0.2)).item()])
