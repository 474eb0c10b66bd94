"""bench/gpu_check.py and bench/gpu/: the one-shot GPU check's logic, on the CPU (it measures on a GPU only).

The refusal without CUDA, the FLOP count behind MFU on the real shapes, the time budget, the table, the rows a
probe's record gives, the configs and random weights the check writes (loaded back by transformers), the data,
the engine flags (parsed by the engine itself), the engine probe's time cap, and the dry run.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402
from gpu import data, engine_probe, report, travel  # noqa: E402
from gpu import model as shapes  # noqa: E402

LLAMA, SMOL = shapes.SHAPES["llama3-8b"], shapes.SHAPES["smollm2-135m"]


# --- refusal ---------------------------------------------------------------------------------------------------


def test_refuses_without_a_gpu_in_one_sentence(monkeypatch, capsys, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "Check", lambda _args: pytest.fail("the check started without a GPU"))
    status = gpu_check.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err.startswith("gpu_check: needs an NVIDIA GPU: torch.cuda.is_available() is False")
    assert captured.err.count("\n") == 1 and captured.err.rstrip().endswith(".")
    assert "Traceback" not in captured.err and captured.out == ""
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()  # nothing written


def test_a_gpu_is_no_problem(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_check.gpu_problem() is None


# --- FLOPs and MFU -----------------------------------------------------------------------------------------------


def test_parameter_counts_of_the_real_shapes():
    assert shapes.matmul_parameters(LLAMA) == 7_504_658_432  # 32 x 218,103,808 + the 4096 x 128256 head
    assert shapes.total_parameters(LLAMA) == 8_030_261_248 == shapes.PARAMETERS["llama3-8b"]
    assert shapes.total_parameters(SMOL) == 134_515_008 == shapes.PARAMETERS["smollm2-135m"]  # tied: one embedding
    assert shapes.lora_parameters(LLAMA, 16) == 41_943_040  # PEFT's count for r=16 on every linear layer
    assert shapes.lora_parameters(LLAMA, 16, ("q_proj", "v_proj")) == 32 * 16 * (4096 + 4096 + 4096 + 1024)


def test_flop_formula_on_the_8b_shape():
    # n (4 N_mm + 6 N_lora) + 6 L H d_head n (n + 1), by hand for n = 2 without LoRA, then with it
    assert shapes.example_flops(2, LLAMA, 0) == 2 * 4 * 7_504_658_432 + 6 * 32 * 32 * 128 * 2 * 3
    assert shapes.example_flops(1024, LLAMA, 41_943_040) == 31_822_218_002_432
    assert shapes.step_flops([2, 1024], LLAMA, 41_943_040) == (shapes.example_flops(2, LLAMA, 41_943_040)
                                                               + 31_822_218_002_432)
    # attention grows with the square of an example's length: one 1024-token example costs more than two of 512
    assert shapes.example_flops(1024, LLAMA, 0) > 2 * shapes.example_flops(512, LLAMA, 0)


def test_mfu_and_the_measured_peak():
    assert shapes.mfu(4e14, 1.0, 8e14) == pytest.approx(0.5)
    assert shapes.mfu(4e14, 0.0, 8e14) is None and shapes.mfu(4e14, 1.0, None) is None
    assert shapes.matmul_peak_flops(8192, 1.376e-3) == pytest.approx(799.1e12, rel=1e-3)


def test_meta_models_of_the_configs_have_the_real_counts():
    for name in ("llama3-8b", "smollm2-135m"):
        config = shapes.llama_config(name, 0, 2, 3)
        counted = sum(math.prod(dims) for _, dims in shapes.parameter_shapes(config))
        assert counted == shapes.PARAMETERS[name]


# --- configs and weights ---------------------------------------------------------------------------------------


def _rope_theta(config) -> float:
    return (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or config.rope_theta


def test_config_writer_gives_loadable_transformers_configs(tmp_path):
    from transformers import AutoConfig

    for name, theta, tied in (("llama3-8b", 500000.0, False), ("smollm2-135m", 100000.0, True)):
        shapes.write_config(shapes.llama_config(name, 0, 2, 3), tmp_path / name)
        config = AutoConfig.from_pretrained(tmp_path / name)
        assert config.model_type == "llama"
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "vocab_size"):
            assert getattr(config, key) == shapes.SHAPES[name][key], (name, key)
        assert _rope_theta(config) == theta and config.tie_word_embeddings is tied
        assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 2, 3)


@pytest.mark.parametrize("name", ["llama3-8b", "smollm2-135m"])
def test_random_weights_of_a_scaled_down_shape_load_without_missing_keys(tmp_path, name):
    import torch
    from transformers import AutoModelForCausalLM

    config = shapes.llama_config(name, 0, 2, 3, **shapes.TINY)
    shapes.write_config(config, tmp_path)
    files = shapes.write_random_weights(config, tmp_path, shard_bytes=400_000)  # several shards and their index
    assert (tmp_path / "model.safetensors.index.json") in files and len(files) > 2
    model, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True, dtype=torch.bfloat16)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    weights = dict(model.named_parameters())
    assert weights["model.layers.0.input_layernorm.weight"].float().eq(1).all()
    assert weights["model.layers.1.mlp.up_proj.weight"].float().std().item() == pytest.approx(shapes.INIT_STD, rel=0.1)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied is (name == "smollm2-135m")
    ids = torch.tensor([[5, 6, 7]])
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_shards_stay_under_their_size():
    named = [("a", (10, 10)), ("b", (10, 10)), ("c", (300,)), ("d", (2,))]
    assert shapes.plan_shards(named, 2, 400) == [["a", "b"], ["c"], ["d"]]  # 600 bytes alone; d does not fit after c
    assert shapes.plan_shards(named, 2, 10**6) == [["a", "b", "c", "d"]]


# --- data --------------------------------------------------------------------------------------------------------


def test_data_is_fixed_and_of_realistic_length(tmp_path):
    records = data.make_records(40, seed=0)
    assert records == data.make_records(40, seed=0) and records != data.make_records(40, seed=1)
    assert all(set(r) == {"instruction", "input", "output"} for r in records)
    tokenizer = data.build_tokenizer(tmp_path / "tok")
    lengths = [len(data.chat_ids(tokenizer, r)[1]) for r in records]
    assert min(lengths) >= 200 and max(lengths) <= 1100 and 450 <= sorted(lengths)[20] <= 850
    assert len(tokenizer) <= SMOL["vocab_size"]  # ids fit both shapes
    summary = data.length_summary(lengths)
    assert summary["total"] == sum(lengths) and summary["examples"] == 40


# --- the plan and its time budget -----------------------------------------------------------------------------------


def _part(timeout=120.0, minimum=60.0, cap=25.0, overhead=45.0):
    return gpu_check.Part("p", "lora8b", "engine", "llama3-8b", "x", timeout, minimum, cap, overhead)


def test_allot_keeps_the_later_parts_minimum():
    part = _part()
    assert gpu_check.allot(540, part, 300) == 120  # room: its own limit
    assert gpu_check.allot(400, part, 300) == 100  # shortened so the later parts keep their minimum
    assert gpu_check.allot(350, part, 300) is None  # 50 s < its 60 s minimum: skipped


def test_training_cap_shrinks_with_a_shortened_limit():
    part = _part()
    assert gpu_check.training_cap(part, 120) == 25
    assert gpu_check.training_cap(part, 60) == 15
    assert gpu_check.training_cap(part, 40) == 5  # never under 5 s


def _schedule(parts, budget):
    """Each part runs to the limit it is given: the seconds each gets (None: skipped), as Check.run allots them."""
    elapsed, given = 0.0, []
    for index, part in enumerate(parts):
        seconds = gpu_check.allot(budget - elapsed, part, sum(p.minimum for p in parts[index + 1:]))
        given.append(seconds)
        elapsed += seconds or 0
    return elapsed, given


def test_the_whole_check_fits_nine_minutes_even_if_every_part_runs_to_its_limit():
    parts = gpu_check.select_parts(list(gpu_check.GROUPS))
    assert [p.key for p in parts] == [p.key for p in gpu_check.PARTS]
    elapsed, given = _schedule(parts, gpu_check.BUDGET)
    assert gpu_check.BUDGET == 540 and elapsed <= 540
    assert all(s is not None and s >= p.minimum for s, p in zip(given, parts, strict=True))
    assert max(travel.DEVICE_TIMEOUT - gpu_check.BUDGET, 0) >= 60  # the device call's limit leaves a minute
    # a tighter budget skips parts instead of overrunning
    elapsed, given = _schedule(parts, 300)
    assert elapsed <= 300 and None in given


def test_parts_bring_the_setup_they_need():
    keys = [p.key for p in gpu_check.select_parts(["qlora8b"])]
    assert keys == ["env", "data", "model_8b", "qlora_8b"]
    assert [p.key for p in gpu_check.select_parts(["serve"])] == ["env", "data", "model_smol", "serve_smol"]


def test_engine_flags_are_the_engines_own(tmp_path):
    from training.config import parse_config

    (tmp_path / "model").mkdir()
    config = parse_config(["--model-path", str(tmp_path / "model"), "--data", "d.json",
                           *gpu_check.engine_flags(4), "--method", "qlora"])
    assert (config.batch_size, config.gradient_accumulation_steps, config.lora_r, config.lora_alpha) == (4, 1, 16, 32)
    assert config.force_epochs and config.skip_test and config.no_tensorboard and config.validation_split == 0
    assert (config.method, config.device, config.target_modules, config.epochs) == ("qlora", "cuda", "all-linear", 1)


def test_optional_engine_flags_only_when_the_engine_has_them(monkeypatch):
    monkeypatch.setattr(gpu_check, "OPTIONAL_ENGINE_FLAGS", {"no_such_field": "--no-such-flag", "skip_test": "--skip-test"})
    assert gpu_check.optional_engine_flags() == ["--skip-test"]
    assert gpu_check.engine_flags(4)[0] == "--skip-test"


def test_every_part_has_a_command_that_exists():
    paths = gpu_check.Paths(Path("/w"))
    for part in gpu_check.PARTS:
        cmd = gpu_check.command(part, paths, 20.0, python="python3")
        assert cmd[0] == "python3" and Path(cmd[1]).is_file(), part.key
        assert str(paths.result(part.key)) in cmd
    liger = gpu_check.command(next(p for p in gpu_check.PARTS if p.key == "liger_8b"), paths, 20.0)
    assert "--expect" in liger and liger[-1] != "qlora"
    qlora = gpu_check.command(next(p for p in gpu_check.PARTS if p.key == "qlora_8b"), paths, 20.0)
    assert qlora[-2:] == ["--method", "qlora"] and "--time-cap" in qlora


def test_wheels_fit_what_one_device_call_carries():
    groups = {g for p in gpu_check.PARTS for g in p.wheels}
    assert groups == set(travel.WHEEL_SPECS) == set(travel.GROUP_MODULES)
    assert travel.DEVICE_CARRY == [".whl/gpu_check"] and len(travel.DEVICE_COMMAND) < 2000


# --- rows and the table ----------------------------------------------------------------------------------------


def _record(ends, lengths, warmup=2, **extra):
    return {"warmup": warmup, "steps": [{"end": e, "lengths": lengths} for e in ends], "status": "ok",
            "peak_allocated": 3 * 1024**3, **extra}


def test_training_metrics_time_the_steps_after_warm_up():
    record = _record([10.0, 11.0, 13.0, 15.0], [100, 200], trainable=1000)
    metrics = gpu_check.training_metrics(record, LLAMA, 1e15)
    assert metrics["timed"] == 2 and metrics["seconds"] == 4.0  # from the end of step 2 to the end of step 4
    assert metrics["tokens"] == 600 and metrics["tokens_per_second"] == 150
    flops = 2 * shapes.step_flops([100, 200], LLAMA, 1000)
    assert metrics["flops"] == flops and metrics["mfu"] == pytest.approx(flops / 4.0 / 1e15)
    assert metrics["peak_gib"] == 3.0
    assert "error" in gpu_check.training_metrics(_record([1.0, 2.0], [5]), LLAMA, 1e15)


def test_rows_say_what_ran_and_what_did_not():
    parts = {p.key: p for p in gpu_check.PARTS}
    engine = gpu_check.training_row(parts["engine_8b"], _record([0, 1, 2, 3], [500], precision="float16",
                                                                trainable=41_943_040), "ok", 8e14)
    assert engine.result == "ok" and engine.tokens_per_second == 500 and "float16" in engine.notes
    assert "41.9M trainable" in engine.notes
    liger = gpu_check.training_row(parts["liger_8b"], _record([0, 1, 2, 3], [500], liger=False), "ok", 8e14)
    assert liger.result.startswith("failed: Liger's fused loss was not in use")
    qlora = gpu_check.training_row(parts["qlora_8b"], _record([0, 1, 2, 3], [500], quantization=None), "ok", 8e14)
    assert qlora.result.startswith("failed: the base model was not loaded in 4 bits")
    few = gpu_check.training_row(parts["trainer_8b"], _record([0, 1], [500]), "ok", 8e14)
    assert few.result.startswith("failed: 2 step(s) ran")
    one, many = gpu_check.serve_rows(parts["serve_smol"], {"clients": 8, "tokens": 128, "speedup": 5.5,
                                                          "single": {"tokens_per_second": 100.0, "requests": 2,
                                                                     "seconds": 2.56},
                                                          "many": {"tokens_per_second": 550.0, "requests": 16,
                                                                   "seconds": 3.7}}, "ok")
    assert (one.tokens_per_second, many.tokens_per_second) == (100.0, 550.0) and many.notes[0] == "x5.50 of 1 client"


def test_comparisons_only_between_rows_that_both_ran():
    a = report.Row("engine_8b", "m", "engine", "ok", tokens_per_second=300.0, peak_gib=20.0)
    b = report.Row("trainer_8b", "m", "trainer", "ok", tokens_per_second=100.0, peak_gib=40.0)
    c = report.Row("liger_8b", "m", "liger", "failed: x", tokens_per_second=310.0)
    gpu_check.comparisons([a, b, c])
    assert a.notes == ["tokens/s x3.00, memory x0.50 of Trainer"] and c.notes == []


def test_table_rendering():
    rows = [report.Row("engine_8b", "Llama", "our | engine", "ok", 12345.6, 21.04, 0.4567, "10 of 13", ["a", "b"]),
            report.Row("qlora_8b", "Llama", "qlora", "skipped: bitsandbytes missing")]
    text = report.render(rows, ["# title"], ["footer"])
    lines = text.splitlines()
    assert lines[0] == "# title" and lines[-1] == "footer"
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 4 and all(line.count(" | ") == len(report.COLUMNS) - 1 for line in table[2:])
    assert table[2] == "| engine_8b | Llama | our \\| engine | ok | 12,346 | 21.0 | 45.7% | 10 of 13 | a; b |"
    assert table[3] == "| qlora_8b | Llama | qlora | skipped: bitsandbytes missing | – | – | – | – |  |"


def test_failure_reason_is_the_last_error_line():
    log = "loading\nTraceback (most recent call last):\n  File x\ntorch.OutOfMemoryError: CUDA out of memory.\n"
    assert gpu_check.failure_reason(log) == "torch.OutOfMemoryError: CUDA out of memory."
    assert gpu_check.failure_reason("Error: QLoRA training needs a CUDA GPU\n") == "Error: QLoRA training needs a CUDA GPU"
    assert gpu_check.failure_reason("") == "no output"


# --- the engine probe --------------------------------------------------------------------------------------------


class _Example:
    def __init__(self, n):
        self.input_ids = list(range(n))


def test_engine_probe_stops_the_run_once_after_its_time_cap(monkeypatch, tmp_path):
    import os

    signals = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: signals.append((pid, sig)))
    probe = engine_probe.Probe(tmp_path / "r.json", warmup=2, time_cap=0.0, argv=[])
    trainer = type("T", (), {"train_set": [_Example(7), _Example(9)]})()
    probe.after_step(trainer, [0, 1])
    probe.after_step(trainer, [0])
    assert signals == []  # warm-up steps are never cut
    probe.after_step(trainer, [1])
    probe.after_step(trainer, [1])
    assert len(signals) == 1 and signals[0][0] == os.getpid()
    probe.write(force=True)
    record = json.loads((tmp_path / "r.json").read_text())
    assert [s["lengths"] for s in record["steps"]] == [[7, 9], [7], [9], [9]] and record["stopped_by_time_cap"]


# --- dry run -----------------------------------------------------------------------------------------------------


def test_dry_run_prints_the_plan_without_a_gpu(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(gpu_check, "gpu_problem", lambda: pytest.fail("a dry run needs no GPU"))
    monkeypatch.setattr(gpu_check, "travel_bytes", lambda: 80 * 1024**2)  # no git subprocess in a unit test
    assert gpu_check.main(["--dry-run", "--wheels", str(tmp_path / "none"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for part in gpu_check.PARTS:
        assert f"[{part.key}]" in out
    assert "--method qlora" in out and "--precision handler" in out
    assert "device run: command='PYTHONUNBUFFERED=1 bash bench/gpu_check.sh'" in out
    assert "TOO MUCH: split into two calls" in out  # 80 MiB would not travel in one call
    assert "bnb: none: its parts are skipped" in out
    assert not list(tmp_path.iterdir())  # a dry run writes nothing
