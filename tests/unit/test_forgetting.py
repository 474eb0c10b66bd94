"""Keeping what the model knew (training/forgetting/): the forgetting rule on scripted losses (it stops, keeps the
right adapter, is off with --force-epochs and with 0, survives a resume), the reference's cache key and cache, its
examples, its evaluation on a tiny model, replay's counts in the mix, the flags and the one-line summaries."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from types import SimpleNamespace

import pytest

from training.autostop import MAX_FORGETTING, Monitor, rules_for
from training.data.tokenize import IGNORE_INDEX, Tokenized
from training.forgetting.reference import (
    CACHE_FILE,
    MAX_NEW_TOKENS,
    GeneralReference,
    ReferenceItem,
    general_reference,
    load_prompts,
    reference_key,
    reference_loss,
)
from training.forgetting.report import general_phrase, kept_description


def _monitor(max_forgetting=0.5, enabled=True, zero=1.0, task="qa") -> Monitor:
    monitor = Monitor(rules_for(task, max_forgetting=max_forgetting), enabled=enabled)
    monitor.general_zero = zero
    return monitor


def _feed(monitor: Monitor, evaluations) -> list[tuple[bool, str | None]]:
    """(train loss, validation loss, general loss) per evaluation, at steps 10, 20, ..."""
    return [monitor.update(10 * (i + 1), train, val, general) for i, (train, val, general) in enumerate(evaluations)]


# --- the rule on scripted losses ---------------------------------------------------------------------------
def test_the_rise_past_the_threshold_stops_and_the_best_inside_it_is_kept():
    monitor = _monitor(max_forgetting=0.5)
    results = _feed(monitor, [(2.0, 2.0, 1.1), (1.5, 1.5, 1.3), (1.0, 1.0, 1.45), (0.5, 0.5, 1.6)])
    assert [reason for _, reason in results[:3]] == [None, None, None]
    is_best, reason = results[-1]
    assert not is_best and reason.startswith("forgetting: the loss on the general reference rose 60% over the base "
                                             "model (limit 50%, --max-forgetting)")
    assert monitor.best_step == 30 and monitor.best_val == 1.0 and not monitor.kept_outside  # the lower loss forgot
    assert monitor.history[-1]["forgetting"] == pytest.approx(0.6)
    assert kept_description(monitor, "validation") == ("best (step 30: validation loss 1.0000, general knowledge "
                                                       "within 45% of the base model)")


def test_forgetting_stops_before_the_perfect_loss_that_would_hide_it():
    monitor = _monitor(max_forgetting=0.5)
    results = _feed(monitor, [(1.0, None, 1.2), (0.005, None, 2.5)])  # no validation: training loss watched
    assert results[-1][1].startswith("forgetting") and monitor.best_step == 10


def test_when_the_first_evaluation_already_forgot_too_much_it_is_kept_and_said_so():
    monitor = _monitor(max_forgetting=0.1)
    [(is_best, reason)] = _feed(monitor, [(1.0, 1.0, 1.3)])
    assert is_best and reason.startswith("forgetting") and monitor.kept_outside and monitor.best_step == 10
    description = kept_description(monitor, "validation")
    assert description.startswith("least forgetting (step 10: validation loss 1.0000, general knowledge +30% over the "
                                  "base model; no evaluation stayed within --max-forgetting 10%")


def test_force_epochs_and_zero_measure_without_stopping():
    evaluations = [(2.0, 2.0, 1.0), (1.0, 1.0, 3.0), (0.5, 0.5, 5.0)]
    for monitor in (_monitor(enabled=False), _monitor(max_forgetting=0)):  # --force-epochs / non-stop, and 0
        results = _feed(monitor, evaluations)
        assert all(reason is None for _, reason in results)
        assert all(is_best for is_best, _ in results) and monitor.best_step == 30  # the loss alone picks the best
        assert [h["forgetting"] for h in monitor.history] == pytest.approx([0.0, 2.0, 4.0])
        assert not monitor.stops_on_forgetting


def test_without_a_reference_the_other_rules_are_unchanged():
    monitor = Monitor(rules_for("qa", patience=2))
    reasons = [r for _, r in _feed(monitor, [(2.0, 2.0, None), (1.5, 1.9, None), (1.4, 1.95, None), (1.3, 1.92, None)])]
    assert reasons[-1].startswith("validation loss did not improve for 2") and monitor.history[-1]["forgetting"] is None


def test_defaults_per_task_type_and_override():
    assert rules_for("qa").max_forgetting == MAX_FORGETTING["qa"] == 1.5
    assert rules_for("preference").max_forgetting == MAX_FORGETTING["preference"]
    assert rules_for("text").max_forgetting == MAX_FORGETTING["text"]
    assert rules_for("qa", max_forgetting=0).max_forgetting == 0 and rules_for("text", max_forgetting=0.2).max_forgetting == 0.2


def test_the_monitor_state_round_trips_through_a_checkpoint():
    monitor = _monitor(max_forgetting=0.1)
    monitor.general_origin = "the starting adapter"
    _feed(monitor, [(1.0, 1.0, 1.3)])
    restored = Monitor(rules_for("qa", max_forgetting=0.1))
    restored.load_state(json.loads(json.dumps(monitor.state())))
    assert (restored.general_zero, restored.general_origin, restored.kept_outside, restored.best_step) == (
        1.0, "the starting adapter", True, 10)
    old = Monitor(rules_for("qa"))
    old.load_state({k: v for k, v in monitor.state().items() if not k.startswith(("general", "kept"))})
    assert old.general_zero is None and not old.kept_outside  # a checkpoint from before the reference


def test_the_general_phrase_rounds_up_and_says_better():
    assert general_phrase(0.021, "the base model") == "general knowledge within 3% of the base model"
    assert general_phrase(-0.012, "the base model") == "general knowledge no worse than the base model's (-1.2% loss)"


# --- the reference ------------------------------------------------------------------------------------------
def test_the_shipped_prompts_are_two_disjoint_varied_sets():
    prompts = load_prompts()
    assert 12 <= len(prompts["watch"]) <= 32 and len(prompts["replay"]) >= 2 * len(prompts["watch"])
    assert not set(prompts["watch"]) & set(prompts["replay"])  # replay never trains on what measures forgetting
    assert len(set(prompts["replay"])) == len(prompts["replay"])


def test_the_cache_key_changes_with_everything_the_reference_depends_on(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x" * 10)
    tokenizer = SimpleNamespace(chat_template="{{ messages }}")
    key = reference_key(tmp_path, tokenizer, "chat", "float32", "cpu")
    assert key == reference_key(tmp_path, tokenizer, "chat", "float32", "cpu")
    prompts = load_prompts()
    changed = [
        reference_key(tmp_path, SimpleNamespace(chat_template="other"), "chat", "float32", "cpu"),
        reference_key(tmp_path, tokenizer, "plain", "float32", "cpu"),
        reference_key(tmp_path, tokenizer, "chat", "bfloat16", "cpu"),
        reference_key(tmp_path, tokenizer, "chat", "float32", "cuda"),
        reference_key(tmp_path, tokenizer, "chat", "float32", "cpu", prompts | {"watch": prompts["watch"][1:]}),
    ]
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))  # new weights: another modification time
    changed.append(reference_key(tmp_path, tokenizer, "chat", "float32", "cpu"))
    assert len({key, *changed}) == len(changed) + 1


def test_reference_items_are_ordinary_sft_examples_and_round_trip():
    item = ReferenceItem("Q?", [1, 2, 3], [7, 8, 2])
    tokenized = item.tokenized()
    assert tokenized.input_ids == [1, 2, 3, 7, 8, 2] and tokenized.labels == [IGNORE_INDEX] * 3 + [7, 8, 2]
    cut = item.tokenized(4)
    assert cut.input_ids == [1, 2, 3, 7] and cut.truncated
    reference = GeneralReference("k", "chat", [item], 0.5, [item, ReferenceItem("R?", [1, 2, 3, 4], [9, 2])], 1.5)
    assert reference.tokens == 3 and len(reference.replay_examples(5)) == 1  # an answer cut to one token is dropped
    again = GeneralReference.from_dict(json.loads(json.dumps(reference.as_dict())), "checkpoint")
    assert again.watch == reference.watch and again.replay == reference.replay and again.base_loss == 0.5
    assert again.origin == "checkpoint"


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(), tokenizer


def test_the_reference_is_built_once_then_read_from_the_model_directory(tiny, tiny_llama_dir, tmp_path):
    model, tokenizer = tiny
    built = general_reference(model, tokenizer, tiny_llama_dir, tmp_path, "cpu", "chat")
    prompts = load_prompts()
    assert built.origin == "built" and [i.prompt for i in built.watch] == prompts["watch"] and not built.replay
    assert (tmp_path / CACHE_FILE).is_file()
    first = built.watch[0]
    expected = tokenizer.apply_chat_template([{"role": "user", "content": first.prompt}], add_generation_prompt=True,
                                             tokenize=False)
    assert tokenizer.decode(first.prompt_ids) == expected  # the chat template's prompt, as training renders it
    assert 1 <= len(first.answer_ids) <= MAX_NEW_TOKENS
    assert built.base_loss == pytest.approx(reference_loss(model, built.watch_examples(), 0, "cpu"), rel=1e-5)
    cached = general_reference(model, tokenizer, tiny_llama_dir, tmp_path, "cpu", "chat")
    assert cached.origin == "cache" and cached.watch == built.watch and cached.base_loss == built.base_loss
    with_replay = general_reference(model, tokenizer, tiny_llama_dir, tmp_path, "cpu", "chat", with_replay=True)
    assert with_replay.origin == "built" and with_replay.watch == built.watch  # only the replay pool was generated
    assert [i.prompt for i in with_replay.replay] == prompts["replay"]
    plain = general_reference(model, tokenizer, tiny_llama_dir, tmp_path, "cpu", "plain")
    assert plain.origin == "built" and plain.watch[0].prompt_ids != first.prompt_ids
    assert len(json.loads((tmp_path / CACHE_FILE).read_text())["entries"]) == 2  # both renderings kept


# --- the watch during training --------------------------------------------------------------------------------
def _trainer(tmp_path, objective=None):
    import torch
    from tiny_models import tiny_config
    from transformers import AutoModelForCausalLM

    from training.launch import Topology, make_accelerator
    from training.loop import Trainer
    from training.modeling import wrap_with_lora
    from training.schedule import Plan

    torch.manual_seed(0)
    model = wrap_with_lora(AutoModelForCausalLM.from_config(tiny_config("llama")), ["q_proj", "v_proj"], 4, 8, 0.0,
                           False, False)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    plan = Plan(epochs=1, examples_per_step=2, accumulation=1, learning_rate=1e-2, evals_per_epoch=1, circular=False,
                adaptive=False, constant_lr=False, optimizer="adamw_torch", precision="float32", device="cpu",
                checkpoints=tmp_path / "checkpoints", save_total_limit=2, row_length=32)
    accelerator = make_accelerator(Topology(1, "ddp"), "cpu", "float32", 1, 1)
    examples = [Tokenized([5, 6, 7, 8], [IGNORE_INDEX, IGNORE_INDEX, 7, 8])] * 2
    return Trainer(model, plan, examples, [], _monitor(max_forgetting=0.5), pad_id=0, seed=0, accelerator=accelerator,
                   objective=objective)


def _reference(count=6) -> GeneralReference:
    items = [ReferenceItem(f"q{i}", [1, 10 + i, 11 + i, 12], [20 + i, 21, 22, 23 + i][: 2 + i % 3]) for i in range(count)]
    return GeneralReference("k", "chat", items, 1.0)


def test_the_watch_measures_the_model_with_the_adapter_on_whatever_the_objective(tmp_path, fresh_accelerate):
    from accelerate.state import AcceleratorState, GradientState

    from training.forgetting.watch import GeneralWatch
    from training.objectives.dpo import PreferenceObjective

    reference = _reference()
    sft = _trainer(tmp_path)
    watch = GeneralWatch(reference)
    measured = watch.loss(sft)
    peft_model = sft.model
    assert measured == pytest.approx(reference_loss(peft_model, reference.watch_examples(), 0, "cpu"), rel=1e-5)
    with peft_model.disable_adapter():
        assert reference_loss(peft_model, reference.watch_examples(), 0, "cpu") != pytest.approx(measured, rel=1e-4)
    assert len(watch.seconds) == 1 and sft.loss_model.training  # back in training mode
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    dpo = _trainer(tmp_path, PreferenceObjective(0.1))  # its own loss module is DPO's: an SFT one is made for this
    assert GeneralWatch(reference).loss(dpo) == pytest.approx(measured, rel=1e-5)


def test_rows_are_batched_by_tokens_and_shared_among_processes():
    from training.forgetting.watch import GeneralWatch

    watch = GeneralWatch(_reference(12))
    assert len(watch.batches(32, 1, 1)) == 1  # ~100 tokens: one forward pass
    two = GeneralWatch(_reference(12)).batches(32, 1, 2)
    assert len(two) == 2 and sum(len(b) for b in two) == len(watch.batches(32, 1, 1)[0])


def test_with_the_stop_off_the_reference_is_measured_sparsely_and_alike_in_every_process(tmp_path, fresh_accelerate):
    from training.forgetting.watch import SPARSE_TOKENS_FACTOR, GeneralWatch

    trainer = _trainer(tmp_path)
    watch = trainer.general = GeneralWatch(_reference())
    assert watch.due(trainer, final=False)  # stop on: every evaluation
    trainer.monitor.enabled = False  # --force-epochs
    measured = []
    for step in range(1, 41):
        trainer.state.step, trainer.state.tokens = step, step * watch.tokens // 4  # a quarter of it per step
        trainer._evaluation(1.0 / step)
        measured.append(trainer.state.history[-1].get("general_loss") is not None)
    steps = [step for step, done in zip(range(1, 41), measured, strict=True) if done]
    gap = math.ceil(SPARSE_TOKENS_FACTOR * 4)  # steps of a quarter each until the trained tokens reach the factor
    assert steps[:3] == [1, 1 + gap, 1 + 2 * gap] and len(steps) < 40 / gap + 2
    assert trainer.state.evals == 40 and all(h["step"] in steps for h in trainer.state.history if "forgetting" in h)
    assert watch.due(trainer, final=True)  # the final evaluation is always measured


def test_a_stop_on_forgetting_inside_the_loop_keeps_the_last_adapter_within_it(tmp_path, fresh_accelerate):
    from training.forgetting.watch import GeneralWatch

    trainer = _trainer(tmp_path)
    trainer.general = GeneralWatch(_reference())
    trainer.monitor.general_zero = trainer.general.loss(trainer) / 1.2  # the model "already forgot" 20%
    trainer._evaluation(1.0)
    assert trainer.stop_reason is None and trainer.state.history[-1]["forgetting"] == pytest.approx(0.2, abs=1e-4)
    assert (tmp_path / "checkpoints" / "best").is_dir()
    trainer.monitor.general_zero /= 2  # now it is past the 50% limit
    trainer.state.step = 2
    trainer._evaluation(0.5)
    assert trainer.stop_reason.startswith("forgetting") and trainer.monitor.best_step == 0
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["general_reference"]["base_loss"] == 1.0 and state["monitor"]["general_zero"] is not None


# --- replay in the mix ----------------------------------------------------------------------------------------
def _split(train: int, val: int):
    from training.data.mixing import EntryShare
    from training.planning import Split

    examples = [Tokenized([1, 2, 3], [IGNORE_INDEX, 2, 3]) for _ in range(train + val)]
    split = Split(examples[:train], examples[train:], "note", list(range(train)), list(range(train, train + val)))
    return split, [EntryShare("data.json", 1.0, 1, train + val, val, train, 1.0)]


def test_replay_takes_its_share_of_every_epoch_and_is_never_validated():
    from training.data.mixing import add_replay, share_lines

    pool = [Tokenized([9, 9, i], [IGNORE_INDEX, 9, i]) for i in range(4)]
    split, shares = _split(14, 3)
    mixed, mixed_shares = add_replay(split, shares, pool, 0.3, seed=1)
    assert len(mixed.train) == 14 + 6 and mixed.val is split.val  # 0.3 x 14 / 0.7 = 6 per epoch
    assert [s.per_epoch for s in mixed_shares] == [14, 6] and sum(s.share for s in mixed_shares) == pytest.approx(1)
    assert mixed_shares[1].share == pytest.approx(0.3) and mixed_shares[1].replay and mixed_shares[1].validation == 0
    copies = Counter(pool.index(t) for t in mixed.train[14:])
    assert sorted(copies) == [0, 1, 2, 3] and sorted(copies.values()) == [1, 1, 2, 2]  # a copy each, 2 sampled
    line = share_lines(mixed_shares)[1]
    assert line.startswith("Mix: general replay") and "never validated; 6 per epoch = 30.0% of each epoch" in line
    assert add_replay(split, shares, pool, 0.0, seed=1) == (split, shares)


def test_replay_counts_scale_with_the_fraction():
    from training.data.mixing import add_replay, replay_count

    assert [replay_count(100, f) for f in (0.1, 0.2, 0.5)] == [11, 25, 100]
    pool = [Tokenized([9, i], [IGNORE_INDEX, i]) for i in range(3)]
    split, shares = _split(2, 0)
    assert len(add_replay(split, shares, pool, 0.9, seed=0)[0].train) == 2 + 18  # 6 copies of each


# --- flags, refusals and the one-line summaries ---------------------------------------------------------------
def test_flags_are_checked_before_anything_is_touched():
    from training.config import ConfigError, parse_config

    base = ["--model-dir", "/nowhere", "--data", "d.json"]
    cfg = parse_config(base + ["--max-forgetting", "0.2", "--replay", "0.25"])
    assert cfg.max_forgetting == 0.2 and cfg.replay == 0.25 and not cfg.no_general_reference
    assert parse_config(base).max_forgetting is None and parse_config(base).replay == 0
    for args, words in ((["--replay", "1"], "--replay must be"), (["--max-forgetting", "-0.1"], "--max-forgetting must"),
                        (["--replay", "0.2", "--no-general-reference"], "--no-general-reference turns off")):
        with pytest.raises(ConfigError, match=words):
            parse_config(base + args)


def test_train_sh_help_lists_the_new_flags():
    from training.config import build_parser

    text = " ".join(build_parser().format_help().split())  # argparse formats help with %: a bare one breaks --help
    assert "--max-forgetting" in text and "a rise of 150 percent; 0 measures" in text and "--replay" in text
    assert "--no-general-reference" in text


def test_replay_is_refused_where_it_cannot_apply_and_the_reference_says_why_it_is_off():
    from training.errors import ConfigError
    from training.forgetting.setup import check_replay, off_reason

    cfg = SimpleNamespace(replay=0.2, no_general_reference=False, strategy="fsdp")
    with pytest.raises(ConfigError, match="this run trains with DPO"):
        check_replay(cfg, "dpo", False)
    with pytest.raises(ConfigError, match="multimodal"):
        check_replay(cfg, "sft", True)
    check_replay(cfg, "sft", False)
    assert off_reason(cfg, "sft", False, 2) is None and "fsdp" in off_reason(cfg, "kto", False, 2)
    assert off_reason(SimpleNamespace(**(vars(cfg) | {"no_general_reference": True})), "sft", False, 1) == \
        "--no-general-reference"


def test_the_trade_line_puts_domain_and_general_side_by_side():
    from training.eval_report import trade_line

    line = trade_line((13.9, 1.4), (math.log(4.2), math.log(4.4)))
    assert line.startswith("domain: perplexity 13.9 → 1.4; general: perplexity 4.2 → 4.4 (loss +3%)")
    assert trade_line(None, (1.0, 0.9)).endswith("(loss -10%)")


def test_the_report_says_what_the_run_cost_outside_the_users_data():
    from training.report import general_lines

    section = {"watched": True, "reference": {"prompts": 16}, "stops": True, "max_forgetting": 1.5,
               "cost": {"seconds_per_evaluation": 1.5, "share_of_run": 0.042}, "zero_loss": 0.6, "base_loss": 0.6,
               "zero_point": "the base model", "kept": {"step": 6, "general_loss": 0.9, "forgetting": 0.5},
               "evaluations": [{"step": 6, "general_loss": 0.9, "forgetting": 0.5}]}
    info = {"forgetting": section, "metrics": {"first_train_loss": 2.0, "best_train_loss": 0.5}}
    lines = general_lines(info)
    assert lines[0].startswith("General:          16 general prompts, the base model's own answers; stop at +150% "
                               "(--max-forgetting); 1.5s per evaluation, 4.2% of the run")
    assert "0.6000 (the base model) -> 0.9000 kept (+50.0%)" in lines[1]
    assert lines[2] == "Trade:            domain: training loss 2 → 0.5; general: perplexity 1.82 → 2.46 (loss +50%)"
    unmeasured = general_lines({**info, "forgetting": {**section, "kept": None, "stops": False}})
    assert "no stop" in unmeasured[0] and "at step 6 (+50.0%); the kept adapter's evaluation was not measured" in \
        unmeasured[1] and len(unmeasured) == 2
    assert general_lines({"forgetting": {"watched": False, "reason": "--no-general-reference"}}) == [
        "General:          not watched (--no-general-reference)"]


def test_a_resume_takes_the_checkpoints_reference_and_adds_a_replay_pool_only_when_asked(tiny, tiny_llama_dir, tmp_path,
                                                                                         monkeypatch):
    from training.forgetting import reference
    from training.forgetting.setup import open_reference
    from training.outputs import STATE_FILE

    model, tokenizer = tiny
    few = {"watch": ["What is 2 + 2?", "Name a colour."], "replay": ["Say hi.", "Count to three.", "Name a fruit."]}
    monkeypatch.setattr(reference, "load_prompts", lambda: few)  # a small set: generating is what takes time
    monkeypatch.setattr(reference, "REPLAY_MAX_NEW_TOKENS", 8)
    saved = _reference()
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / STATE_FILE).write_text(json.dumps({"general_reference": saved.as_dict()}))
    cfg = SimpleNamespace(no_general_reference=False, replay=0.0, strategy="ddp")
    ctx = SimpleNamespace(cfg=cfg, data=SimpleNamespace(objective=SimpleNamespace(name="sft"), task="qa"),
                          multimodal=False, model_path=tiny_llama_dir, workdir=tmp_path)
    same = open_reference(ctx, model, tokenizer, checkpoint, "cpu", 1)
    assert same.origin == "checkpoint" and same.watch == saved.watch and not same.replay
    cfg.replay = 0.2
    replayed = open_reference(ctx, model, tokenizer, checkpoint, "cpu", 1)
    assert replayed.origin == "checkpoint" and replayed.watch == saved.watch and replayed.base_loss == saved.base_loss
    assert [i.prompt for i in replayed.replay] == few["replay"] and not (tmp_path / CACHE_FILE).exists()
    fresh = open_reference(ctx, model, tokenizer, None, "cpu", 1)
    assert fresh.origin == "built" and fresh.replay and (tmp_path / CACHE_FILE).is_file()
    cfg.no_general_reference = True
    assert open_reference(ctx, model, tokenizer, None, "cpu", 1) is None
