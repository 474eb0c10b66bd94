"""Preference training (DPO): the format and its errors, the loss against TRL's, answer-only log-probs of
packed pairs, the reference and --from-adapter (end to end: test_preference_e2e.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from train_helpers import random_adapter

from training.data.formats import examples_from_source
from training.data.sources import DataError, SourceRecords

USER = {"role": "user", "content": "What colour is the sky?"}
BLUE = {"role": "assistant", "content": "It is blue."}
GREEN = {"role": "assistant", "content": "It is green."}


def _examples(*records, origin="prefs.json", forced=None):
    return examples_from_source(SourceRecords(origin, list(records)), forced)


# --- the format ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("record", "prompt", "chosen", "rejected"), [
    ({"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}, "The sky is", " blue.", " green."),
    ({"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN]}, [USER], [BLUE], [GREEN]),
    ({"chosen": [USER, BLUE], "rejected": [USER, GREEN]}, [USER], [BLUE], [GREEN]),  # implicit prompt
    ({"chosen": "The sky is blue.", "rejected": "The sky is green."}, "The sky is", " blue.", " green."),
    # a text prompt beside conversations: the prompt is the conversations' shared start, as TRL reads it
    ({"prompt": "sky?", "chosen": [USER, BLUE], "rejected": [USER, GREEN]}, [USER], [BLUE], [GREEN]),
])
def test_preference_shapes_are_detected_and_split_like_trl(record, prompt, chosen, rejected):
    from trl.data_utils import maybe_extract_prompt

    (example,) = _examples(record)
    assert example.format == "preference"
    assert (example.messages or example.prompt, example.chosen, example.rejected) == (prompt, chosen, rejected)
    trl = maybe_extract_prompt(dict(record))
    assert (trl["prompt"], trl["chosen"], trl["rejected"]) == (prompt, chosen, rejected)


@pytest.mark.parametrize(("records", "message"), [
    ([{"prompt": "Q?", "chosen": "  ", "rejected": "No."}], "record 1: 'chosen' is empty."),
    ([{"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}, {"prompt": "Q?", "chosen": "Yes."}],
     "record 2: missing field(s) rejected for preference format."),
    ([{"prompt": [USER], "chosen": [BLUE], "rejected": [BLUE]}], "record 1: 'chosen' and 'rejected' are the same"),
    ([{"prompt": [USER], "chosen": [BLUE], "rejected": "It is green."}], "record 1: 'chosen' and 'rejected' must both"),
    ([{"prompt": [USER], "chosen": [BLUE, USER], "rejected": [GREEN]}], "must end with an assistant message"),
    ([{"chosen": [USER, BLUE], "rejected": [USER, BLUE]}], "record 1: 'chosen' has no answer after the prompt."),
    ([{"chosen": [USER, BLUE], "rejected": [{"role": "user", "content": "Hi"}, GREEN]}], "share no prompt"),
    ([{"prompt": "Q?", "chosen": 3, "rejected": "No."}], "'chosen' must be text or a list of messages"),
    ([{"prompt": [{"role": "user", "content": [{"type": "image", "image": "cat.png"}]}], "chosen": [BLUE],
       "rejected": [GREEN]}], "record 1 'prompt': has an image; preference pairs are text only."),
    # a file must hold one format: an SFT record after preference pairs is refused, and the reverse
    ([{"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}, {"instruction": "Q?", "output": "Yes."}],
     "record 2: missing field(s) chosen, rejected"),
    ([{"instruction": "Q?", "output": "Yes."}, {"prompt": "Q?", "chosen": "Yes.", "rejected": "No."}],
     "record 2: missing field(s) instruction, output"),
])
def test_bad_preference_records_are_one_sentence_naming_file_and_record(records, message):
    with pytest.raises(DataError) as error:
        _examples(*records)
    text = str(error.value)
    assert text.startswith("prefs.json, record") and message in text
    assert "\n" not in text and text.endswith(".") and text.count(". ") == 0


def test_detection_makes_the_method_dpo_and_dpo_needs_preference_data():
    from training.config import TrainConfig
    from training.objectives.dpo import MethodError, resolve_method

    pairs = _examples({"prompt": "Q?", "chosen": "Yes.", "rejected": "No."})
    sft = _examples({"question": "Q?", "answer": "Yes."}, origin="qa.json")
    cfg = TrainConfig(data="x", model_dir="m")
    assert resolve_method(cfg, pairs) and cfg.method == "dpo"
    assert not resolve_method(TrainConfig(data="x", model_dir="m"), sft)
    with pytest.raises(MethodError, match=r"^--method dpo trains on preference pairs .* qa\.json is in qa format\.$"):
        resolve_method(TrainConfig(data="x", model_dir="m", method="dpo"), sft)
    with pytest.raises(MethodError, match=r"^qa\.json is in qa format while prefs\.json holds preference pairs"):
        resolve_method(TrainConfig(data="x", model_dir="m"), pairs + sft)
    with pytest.raises(MethodError, match=r"^--train-on-prompt does not apply to preference pairs"):
        resolve_method(TrainConfig(data="x", model_dir="m", train_on_prompt=True), pairs)
    with pytest.raises(MethodError, match=r"^Preference training \(DPO\) is for text-only models"):
        resolve_method(TrainConfig(data="x", model_dir="m"), pairs, multimodal=True)
    qlora = TrainConfig(data="x", model_dir="m", method="qlora")
    assert resolve_method(qlora, pairs) and qlora.method == "qlora"  # DPO on the 4-bit base


# --- the loss --------------------------------------------------------------------------------------
def _trl_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    """TRL's DPOTrainer._compute_loss (loss_type sigmoid) on these sequence log-probs: a stand-in model
    returns per-token log-probs that sum to them."""
    from collections import defaultdict

    import torch
    from trl import DPOTrainer

    pairs, length = policy_chosen.shape[0], 4
    per_token = torch.zeros(2 * pairs, length - 1)
    per_token[:, -1] = torch.cat([policy_chosen, policy_rejected])  # one answer token carries the whole sum
    completion = torch.zeros(2 * pairs, length, dtype=torch.long)
    completion[:, -1] = 1
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                              mean_logits=torch.zeros_like(per_token), is_top1=torch.zeros_like(per_token).bool())
    model = type("StandIn", (), {"training": True, "__call__": lambda self, **_kw: outputs})()
    accelerator = SimpleNamespace(device="cpu", gather=lambda t: t, gather_for_metrics=lambda t: t)
    trainer = SimpleNamespace(model=model, accelerator=accelerator, precompute_ref_logps=True, beta=beta,
                              f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0],
                              label_smoothing=0.0, use_weighting=False, ld_alpha=None, aux_loss_enabled=False,
                              _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.ones(2 * pairs, length, dtype=torch.long), "attention_mask": torch.ones(2 * pairs, length),
              "completion_mask": completion, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return float(loss), {k: v[-1] for k, v in trainer._metrics["train"].items()}


def test_dpo_loss_and_rewards_equal_trls_on_fixed_tensors():
    import torch

    from training.objectives.losses import dpo_sigmoid_loss

    policy_chosen = torch.tensor([-12.0, -30.5, -7.25, -3.0])
    policy_rejected = torch.tensor([-15.0, -28.0, -7.0, -40.0])
    ref_chosen = torch.tensor([-13.0, -29.0, -8.0, -3.5])
    ref_rejected = torch.tensor([-14.0, -29.5, -6.0, -39.0])
    for beta in (0.1, 0.5):
        losses, chosen, rejected = dpo_sigmoid_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
        expected, metrics = _trl_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
        assert float(losses.mean()) == pytest.approx(expected, rel=1e-6)
        assert float(chosen.mean()) == pytest.approx(metrics["rewards/chosen"], rel=1e-6)
        assert float(rejected.mean()) == pytest.approx(metrics["rewards/rejected"], rel=1e-6)
        assert float((chosen > rejected).float().mean()) == pytest.approx(metrics["rewards/accuracies"])
        assert float((chosen - rejected).mean()) == pytest.approx(metrics["rewards/margins"], rel=1e-6)
    # by hand for one pair: beta 0.1, ratios +1 and -1 -> -log sigmoid(0.2)
    losses, _, _ = dpo_sigmoid_loss(policy_chosen[:1], policy_rejected[:1], ref_chosen[:1], ref_rejected[:1], 0.1)
    assert float(losses[0]) == pytest.approx(-float(torch.nn.functional.logsigmoid(torch.tensor(0.2))))


# --- pairs on a tiny model ---------------------------------------------------------------------------
@pytest.fixture
def tiny_pairs(tiny_llama_dir):
    from transformers import AutoTokenizer

    from training.objectives.dpo import tokenize_pairs

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    examples = _examples({"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN]},
                         {"prompt": [{"role": "user", "content": "Numbers?"}],
                          "chosen": [{"role": "assistant", "content": "one two three four five"}],
                          "rejected": [{"role": "assistant", "content": "six"}]},
                         {"prompt": "The quick brown fox", "chosen": " jumps.", "rejected": " sleeps all day."})
    return tokenizer, tokenize_pairs(tokenizer, examples, 256)


def test_labels_cover_the_answer_only(tiny_pairs):
    tokenizer, pairs = tiny_pairs
    for pair, (chosen, rejected) in zip(pairs, [("It is blue.", "It is green."), ("one two three four five", "six"),
                                                (" jumps.", " sleeps all day.")], strict=True):
        for sequence, answer in ((pair.chosen, chosen), (pair.rejected, rejected)):
            labelled = tokenizer.decode([t for t in sequence.labels if t != -100])
            assert labelled.startswith(answer) and labelled.rstrip().endswith(tokenizer.eos_token)
            assert "user" not in labelled and "fox" not in labelled


def _trainer(tmp_path, tiny_llama_dir, pairs, beta=0.1, accumulation=1):
    import torch
    from transformers import AutoModelForCausalLM

    from training.autostop import Monitor, rules_for
    from training.launch import Topology, make_accelerator
    from training.loop import Trainer
    from training.modeling import wrap_with_lora
    from training.objectives.dpo import PreferenceObjective
    from training.schedule import Plan

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)  # the LoRA A initialisation
    model = wrap_with_lora(model, ["q_proj", "v_proj", "down_proj"], 4, 8, 0.0, False, False)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter matter
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    plan = Plan(epochs=1, examples_per_step=2, accumulation=accumulation, learning_rate=1e-3, evals_per_epoch=1, circular=False,
                adaptive=False, constant_lr=False, optimizer="adamw_torch", precision="float32", device="cpu",
                checkpoints=tmp_path / "checkpoints", save_total_limit=2, row_length=64)
    accelerator = make_accelerator(Topology(1, "ddp"), "cpu", "float32", accumulation, 1)
    return Trainer(model, plan, pairs, [], Monitor(rules_for("preference"), enabled=False), pad_id=0, seed=0,
                   accelerator=accelerator, objective=PreferenceObjective(beta))


def _flat(pairs_of_values) -> list[float]:
    return [value for pair in pairs_of_values for value in pair]


def _answer_logps(model, sequence):
    """Summed log-probs of the labelled tokens, from the model's own logits on the sequence alone."""
    import torch

    ids = torch.tensor([sequence.input_ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = torch.tensor(sequence.labels[1:])
    keep = targets != -100
    return float(logps[keep].gather(1, targets[keep, None]).sum())


def test_packed_pairs_give_each_answers_own_log_probs_and_the_reference_is_the_start(tmp_path, tiny_llama_dir,
                                                                                        tiny_pairs, fresh_accelerate):
    import torch
    from peft import get_peft_model_state_dict

    from training.objectives.dpo import compute_reference

    _, pairs = tiny_pairs
    trainer = _trainer(tmp_path, tiny_llama_dir, pairs)
    model = trainer.model.eval()
    # reference = base with the adapter switched off
    compute_reference(trainer, pairs, None)
    with model.disable_adapter():
        base = [(_answer_logps(model, p.chosen), _answer_logps(model, p.rejected)) for p in pairs]
    assert _flat(p.reference for p in pairs) == pytest.approx(_flat(base), rel=1e-4)
    # reference = a starting adapter: its weights are used for the pass and the current ones put back
    start = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    adapted = [(_answer_logps(model, p.chosen), _answer_logps(model, p.rejected)) for p in pairs]
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_A" in name:
                parameter.mul_(-3)
    current = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    compute_reference(trainer, pairs, start)
    assert _flat(p.reference for p in pairs) == pytest.approx(_flat(adapted), rel=1e-4)
    assert all(torch.equal(current[k], v) for k, v in get_peft_model_state_dict(model).items())
    # the packed forward: every pair's answers in one batch give the same log-probs as one at a time
    batch = trainer._to_device(trainer.objective.eval_batches(pairs, 64, 4)[0])
    assert batch["input_ids"].shape[0] < 2 * len(pairs)  # sequences share rows
    with torch.no_grad():
        loss_sum, count, stats = trainer.loss_model(**batch)
        batch.pop("reference")
        logps = trainer.loss_model(**batch)
    now = [(_answer_logps(model, p.chosen), _answer_logps(model, p.rejected)) for p in pairs]
    assert _flat(logps.tolist()) == pytest.approx(_flat(now), rel=1e-4)
    margins = [0.1 * ((c - rc) - (r - rr)) for (c, r), (rc, rr) in zip(now, adapted, strict=True)]
    expected = sum(-float(torch.nn.functional.logsigmoid(torch.tensor(m))) for m in margins)
    assert int(count) == 3 and float(loss_sum) == pytest.approx(expected, rel=1e-4)
    assert float(stats[0]) == sum(m > 0 for m in margins) and float(stats[1]) == pytest.approx(sum(margins), abs=1e-4)
    # a fresh run from --from-adapter: the reference is the model as it is
    compute_reference(trainer, pairs, None, adapter_on=True)
    assert _flat(p.reference for p in pairs) == pytest.approx(_flat(now), rel=1e-4)


def test_a_dpo_step_is_the_mean_over_its_pairs_whatever_the_accumulation(tmp_path, tiny_llama_dir, tiny_pairs,
                                                                          fresh_accelerate):
    import torch
    from accelerate.state import AcceleratorState, GradientState

    from training.objectives.dpo import compute_reference

    _, pairs = tiny_pairs
    results = []
    for accumulation in (1, 3):  # one micro-batch of three pairs, or three of one pair each
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        trainer = _trainer(tmp_path, tiny_llama_dir, pairs, accumulation=accumulation)
        compute_reference(trainer, pairs, None)
        with torch.no_grad():
            (batch, _), = trainer.objective.micro_batches([0, 1, 2], pairs, 1, 1, 0, 64)
            whole, count, stats = trainer.loss_model(**trainer._to_device(batch))
        trainer._set_lr()
        step = float(trainer.train_step([0, 1, 2]))
        assert int(count) == 3 and step == pytest.approx(float(whole), rel=1e-5)
        assert trainer._local_stats.tolist() == pytest.approx(stats.tolist(), abs=1e-5)
        results.append({n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
    assert all(torch.allclose(results[0][n], results[1][n], atol=1e-6, rtol=1e-4) for n in results[0])


def test_evaluation_scores_pairs_on_their_chosen_answers(tiny_llama_dir):
    from transformers import AutoTokenizer

    from training.evaluate import prepare

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    data = prepare(tokenizer, _examples({"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN]},
                                        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}), 256)
    answers = [tokenizer.decode(item.answer_ids) for item in data.answered]
    assert len(answers) == 2 and answers[0].startswith("It is blue.") and answers[1].startswith(" blue.")


def test_from_adapter_must_be_a_lora_adapter_of_this_model_and_keeps_its_shape(tmp_path, tiny_llama_dir):
    import shutil

    from training.config import TrainConfig
    from training.start_adapter import read_start_adapter

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_llama_dir, model_dir / "model")
    adapter = random_adapter(model_dir, model_dir / "lora")
    info = {"source": "org/tiny"}

    def read(path="./lora", **flags):
        return read_start_adapter(TrainConfig(data="x", model_dir=model_dir, from_adapter=path, **flags), model_dir,
                                  model_dir / "model", info)

    start = read()  # relative to the model directory, as the guide writes it
    assert (start.path, start.rank, start.alpha, start.targets) == (adapter, 4, 8, ["q_proj", "v_proj"])
    assert start.weights and all(".lora_" in key for key in start.weights)
    with pytest.raises(DataError, match=r"has --lora-r 4, not 8: its shape is kept, so leave --lora-r out\.$"):
        read(lora_r=8)
    with pytest.raises(DataError, match=r"^--from-adapter .*/nowhere: no readable adapter_config\.json there"):
        read("nowhere")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/elsewhere/model"}))
    (adapter / "adapter_info.json").write_text(json.dumps({"base_model": "org/other"}))
    with pytest.raises(DataError, match=r"was trained on org/other, not on this model \(org/tiny\); start from"):
        read()
