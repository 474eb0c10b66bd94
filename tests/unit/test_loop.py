"""The training loop itself, in process on a tiny model: optimizer-step bookkeeping, LR schedule with
accumulation, token-weighted steps, selective cross-entropy, auto-stop on scripted losses, packing
boundaries, checkpoint round trips (RNG included) and no forward pass without a purpose."""

from __future__ import annotations

import random

import pytest

from training.autostop import Monitor, rules_for
from training.batching import epoch_steps, labelled_tokens, micro_batches, shard_step
from training.data.packing import pack_rows
from training.data.tokenize import IGNORE_INDEX, Tokenized
from training.schedule import Plan, examples_for_cycle, lr_factor, steps_for_epoch, total_steps


def _examples(count: int, seed: int = 0, low: int = 5, high: int = 40) -> list[Tokenized]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        size = rng.randint(low, high)
        ids = [rng.randint(5, 300) for _ in range(size)]
        prompt = rng.randint(1, size - 2)
        out.append(Tokenized(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def _plan(tmp_path, **overrides) -> Plan:
    values = {"epochs": 1, "examples_per_step": 4, "accumulation": 1, "learning_rate": 1e-2, "evals_per_epoch": 1,
              "circular": False, "adaptive": False, "constant_lr": False, "optimizer": "adamw_torch",
              "precision": "float32", "device": "cpu", "checkpoints": tmp_path / "checkpoints", "save_total_limit": 2,
              "row_length": 64}
    return Plan(**(values | overrides))


# --- schedule and bookkeeping ----------------------------------------------------------------------
def test_steps_are_optimizer_steps_whatever_the_accumulation(tmp_path):
    for accumulation in (1, 4):
        plan = _plan(tmp_path, examples_per_step=8, accumulation=accumulation, epochs=3)
        assert total_steps(plan, 100) == 3 * 13  # ceil(100 / 8) per epoch, not multiplied by accumulation
    assert steps_for_epoch(_plan(tmp_path, epochs=1.5), 1, 40) == 5  # half of the 10 steps of an epoch


def test_cosine_reaches_its_floor_at_the_last_step_not_before(tmp_path):
    plan = _plan(tmp_path, examples_per_step=2, accumulation=4, epochs=2)
    total = total_steps(plan, 40)
    factors = [lr_factor(plan, step, total) for step in range(total)]
    assert factors[total // 4] > 0.8 and factors[total // 2] > 0.45
    assert factors[-1] == pytest.approx(0.1, abs=0.01)
    assert max(factors) == pytest.approx(1.0)


def test_circular_growth_and_its_cap(tmp_path):
    plan = _plan(tmp_path, circular=True, examples_per_step=1, max_examples_per_step=3, epochs=30)
    assert [examples_for_cycle(plan, cycle, 100) for cycle in (0, 4, 5, 10, 29)] == [1, 1, 2, 3, 3]


# --- batching and packing ----------------------------------------------------------------------------
def test_epoch_steps_cover_every_example_once_and_change_order_by_epoch():
    steps = epoch_steps(10, 3, seed=1, epoch=0)
    assert [len(s) for s in steps] == [3, 3, 3, 1]
    assert sorted(i for s in steps for i in s) == list(range(10))
    assert epoch_steps(10, 3, seed=1, epoch=1) != steps and epoch_steps(10, 3, seed=1, epoch=0) == steps


def test_packing_keeps_examples_apart_and_rows_within_length():
    examples = _examples(20)
    rows = pack_rows(examples, 64)
    assert all(row.length <= 64 for row in rows)
    assert sorted(len(e.input_ids) for e in examples) == sorted(
        b - a for row in rows for a, b in _boundaries(row.position_ids))
    for row in rows:  # the first token of every example predicts nothing from the one before
        assert all(row.labels[start] == IGNORE_INDEX for start, _ in _boundaries(row.position_ids))
    assert sum(r.length for r in rows) == sum(len(e.input_ids) for e in examples)


def _boundaries(positions):
    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    return list(zip(starts, starts[1:], strict=False))


def test_shards_are_balanced_and_empty_shards_get_an_uncounted_stand_in():
    examples = _examples(6)
    lengths = [len(e.input_ids) for e in examples]
    shards = shard_step(list(range(6)), lengths, 2)
    assert sorted(i for s in shards for i in s) == list(range(6))
    assert abs(sum(lengths[i] for i in shards[0]) - sum(lengths[i] for i in shards[1])) <= max(lengths)
    batches = micro_batches([0, 1], examples, accumulation=2, processes=2, rank=1, row_length=64)
    assert [real for _, real in batches] == [True, False]
    assert labelled_tokens([0], examples) == sum(1 for x in examples[0].labels[1:] if x != IGNORE_INDEX)


# --- auto-stop on scripted losses ----------------------------------------------------------------------
def _feed(monitor, losses):
    reasons = []
    for step, (train, val) in enumerate(losses, 1):
        reasons.append(monitor.update(step, train, val)[1])
    return reasons


def test_patience_counts_evaluations_without_improvement():
    monitor = Monitor(rules_for("qa", patience=2))
    assert _feed(monitor, [(2.0, 2.0), (1.5, 1.9), (1.4, 1.95), (1.3, 1.92)])[-1].startswith(
        "validation loss did not improve for 2")
    assert monitor.best_val == 1.9 and monitor.best_step == 2


def test_overfitting_needs_a_rising_gap():
    reasons = _feed(Monitor(rules_for("qa")), [(2.0, 2.0), (1.0, 1.5), (0.5, 1.6), (0.3, 1.8)])
    assert reasons[-1].startswith("overfitting") and reasons[:-1] == [None, None, None]


def test_without_validation_the_training_loss_is_watched():
    monitor = Monitor(rules_for("qa", patience=3))
    reasons = _feed(monitor, [(3.0, None), (2.0, None), (0.005, None)])
    assert reasons[-1].startswith("perfect loss") and monitor.best_val == 0.005
    stalled = _feed(Monitor(rules_for("qa", patience=2)), [(1.0, None), (1.1, None), (1.2, None)])
    assert stalled[-1].startswith("training loss did not improve")


def test_disabled_monitor_never_stops():
    assert _feed(Monitor(rules_for("qa"), enabled=False), [(0.001, 0.001)] * 5) == [None] * 5


# --- the loop on a tiny model -------------------------------------------------------------------------
def _trainer(tmp_path, plan, examples, val=None, seed=0):
    import torch
    from tiny_models import tiny_config
    from transformers import AutoModelForCausalLM

    from training.launch import Topology, make_accelerator
    from training.loop import Trainer
    from training.modeling import wrap_with_lora

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    model = wrap_with_lora(model, ["q_proj", "v_proj", "down_proj"], 4, 8, 0.0, False, False)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter matter from the first step
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02, generator=torch.Generator().manual_seed(len(name)))
    accelerator = make_accelerator(Topology(1, "ddp"), "cpu", "float32", plan.accumulation, 1)
    return Trainer(model, plan, examples, val, Monitor(rules_for("qa"), enabled=False), pad_id=0, seed=seed,
                   accelerator=accelerator)


def _lora_weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def _one_step(trainer, indices):
    trainer._set_lr()
    return trainer.train_step(indices)


def test_accumulation_trains_like_a_bigger_batch(tmp_path, fresh_accelerate):
    from accelerate.state import AcceleratorState, GradientState

    examples = _examples(8)
    big = _trainer(tmp_path, _plan(tmp_path, examples_per_step=4, accumulation=1), examples)
    loss_big = float(_one_step(big, [0, 1, 2, 3]))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    small = _trainer(tmp_path, _plan(tmp_path, examples_per_step=4, accumulation=4), examples)
    loss_small = float(_one_step(small, [0, 1, 2, 3]))
    assert loss_small == pytest.approx(loss_big, rel=1e-5)
    a, b = _lora_weights(big), _lora_weights(small)
    assert all(_close(a[n], b[n]) for n in a)


def _close(x, y) -> bool:
    import torch

    return torch.allclose(x, y, atol=1e-6, rtol=1e-4)


def test_the_step_loss_is_token_weighted(tmp_path, fresh_accelerate):
    import torch

    examples = [_examples(1, seed=1, low=40, high=40)[0], _examples(1, seed=2, low=6, high=6)[0]]
    trainer = _trainer(tmp_path, _plan(tmp_path, examples_per_step=2, accumulation=2), examples)
    with torch.no_grad():
        sums = [trainer.loss_model(**trainer._to_device(pack_rows([e], 64))) for e in examples]
    expected = sum(float(s) for s, _ in sums) / sum(int(c) for _, c in sums)
    step_sum = float(_one_step(trainer, [0, 1]))
    assert step_sum / labelled_tokens([0, 1], examples) == pytest.approx(expected, rel=1e-5)


def test_selective_loss_equals_the_models_own_loss(tmp_path, fresh_accelerate):
    import torch

    from training.data.packing import collate

    examples = _examples(3)
    trainer = _trainer(tmp_path, _plan(tmp_path), examples)
    rows = pack_rows(examples, 256)
    batch = collate(rows, 0)
    with torch.no_grad():
        loss_sum, count = trainer.loss_model(**batch)
        reference = trainer.model(**batch, use_cache=False).loss
    assert float(loss_sum / count) == pytest.approx(float(reference), rel=1e-5)


def test_no_validation_means_no_evaluation_pass(tmp_path, fresh_accelerate, monkeypatch):
    from training.loop import StopSignal

    examples = _examples(12)
    trainer = _trainer(tmp_path, _plan(tmp_path, examples_per_step=3, evals_per_epoch=2), examples)
    calls = []
    original = trainer.loss_model.forward
    monkeypatch.setattr(trainer.loss_model, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    with StopSignal() as stop:
        reason = trainer.run(stop)
    assert reason == "completed 1 epoch(s)" and trainer.state.step == 4 and trainer.state.evals == 2
    assert len(calls) == 4  # one forward per step, none for the two checks
    assert trainer.evaluate() is None and (tmp_path / "checkpoints" / "best").is_dir()


def test_checkpoint_round_trip_restores_weights_optimizer_position_and_rng(tmp_path, fresh_accelerate):
    import torch

    from training.checkpointing import is_complete

    examples = _examples(8)
    first = _trainer(tmp_path, _plan(tmp_path), examples)
    _one_step(first, [0, 1, 2, 3])
    first.state.step, first.state.step_in_epoch = 1, 1
    first.save_checkpoint(is_best=True)
    directory = tmp_path / "checkpoints" / "checkpoint-1"
    assert is_complete(directory) and not list((tmp_path / "checkpoints").glob(".tmp-*"))
    expected_rng = torch.rand(3)
    weights = _lora_weights(first)
    moments = {k: v["exp_avg"].clone() for k, v in first.optimizer.state_dict()["state"].items()}

    second = _trainer(tmp_path, _plan(tmp_path), examples, seed=5)
    second.load_checkpoint(directory)
    assert torch.equal(torch.rand(3), expected_rng)
    assert all(torch.equal(weights[n], p) for n, p in _lora_weights(second).items())
    restored = second.optimizer.state_dict()["state"]
    assert all(torch.equal(moments[k], restored[k]["exp_avg"]) for k in moments)
    assert (second.state.step, second.state.step_in_epoch) == (1, 1)


def test_incomplete_checkpoints_are_skipped(tmp_path):
    from training.checkpointing import newest_complete, remove_stale_temporaries
    from training.outputs import STATE_FILE

    root = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        directory = root / f"checkpoint-{step}"
        directory.mkdir(parents=True)
        (directory / "adapter_model.safetensors").write_bytes(b"x")
        (directory / STATE_FILE).write_text("{}" if complete else '{"loop": {"st')
    (root / ".tmp-checkpoint-8").mkdir()
    found, skipped = newest_complete(root)
    assert found.name == "checkpoint-4" and [s.name for s in skipped] == ["checkpoint-6"]
    remove_stale_temporaries(root)
    assert not (root / ".tmp-checkpoint-8").exists()
