"""Run files (`--config run.yaml`): the same TrainConfig as the flags, CLI overrides, relative paths, one-sentence
errors, and the saved configuration reading back as the same run."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import yaml

from training.config import ConfigError, TrainConfig, parse_config
from training.runfile import NOT_SAVED, run_file_text, saved_config

FLAGS = ["--mode", "fast", "--learning-rate", "1e-4", "--lora-r", "4", "--circular", "--strategy", "deepspeed",
         "--seed", "7", "--max-circular-epochs", "20", "--validation-split", "0.2", "--zero-stage", "3",
         "--gradient-checkpointing", "off", "--tensorboard-port", "7000"]
FILE = {"mode": "fast", "learning_rate": "1e-4", "lora-r": 4, "circular": True, "strategy": "deepspeed", "seed": 7,
        "max-circular-epochs": 20, "validation_split": 0.2, "zero-stage": 3, "gradient-checkpointing": "off",
        "tensorboard-port": 7000}


def _parse(tmp_path, *args):
    return parse_config(["--model-dir", str(tmp_path), *args])


def _write(path: Path, values) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values) if path.suffix == ".json" else yaml.safe_dump(values))
    return str(path)


def _without_config(cfg: TrainConfig) -> dict:
    return asdict(replace(cfg, config=None))


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_run_file_gives_the_same_configuration_as_its_flags(tmp_path, suffix):
    data = str(tmp_path / "d.json")
    flags = _parse(tmp_path, "--data", data, *FLAGS)
    run_file = _write(tmp_path / f"run{suffix}", {**FILE, "data": data})
    from_file = _parse(tmp_path, "--config", run_file)
    assert _without_config(from_file) == _without_config(flags)
    assert from_file.learning_rate == 1e-4 and from_file.lora_r == 4 and from_file.circular is True


def test_only_flags_given_on_the_command_line_override_the_file(tmp_path):
    run_file = _write(tmp_path / "run.yaml", {**FILE, "data": "x.json", "lora-dropout": 0.0, "optimizer": "adafactor"})
    cfg = _parse(tmp_path, "--config", run_file, "--learning-rate", "3e-3", "--mode", "slow", "--data", "y.json")
    assert cfg.learning_rate == 3e-3 and cfg.mode == "slow" and cfg.data == "y.json"  # given: they win
    # not given: the file's values stand, although argparse has other defaults for them
    assert cfg.lora_dropout == 0.0 and cfg.optimizer == "adafactor" and cfg.seed == 7 and cfg.circular is True
    assert cfg.validation_split == 0.2 and cfg.tensorboard_port == 7000


def test_relative_paths_are_taken_from_the_run_files_directory(tmp_path):
    run_file = _write(tmp_path / "runs" / "run.yaml", {
        "data": [{"path": "data/chat.json", "weight": 3}, "docs/*.jsonl", {"path": "squad:train", "weight": 0.5},
                 "/abs/x.json"],
        "output": "out", "model-path": "../model", "from-adapter": "/abs/lora"})
    cfg = _parse(tmp_path, "--config", run_file)
    base = (tmp_path / "runs").resolve()
    assert cfg.data == f"{base}/data/chat.json@3,{base}/docs/*.jsonl,squad:train@0.5,/abs/x.json"
    assert cfg.output == base / "out" and cfg.model_path == base / "../model" and cfg.from_adapter == Path("/abs/lora")


@pytest.mark.parametrize(("values", "message"), [
    ({"learning-rat": 1}, "unknown key 'learning-rat'; did you mean 'learning-rate'?"),
    ({"lora_rank": 8}, "unknown key 'lora_rank'; did you mean 'lora-r'?"),
    ({"xyzzy": 1}, "unknown key 'xyzzy'; the keys are the long names"),
    ({"lora-r": 3.5}, "'lora-r' must be a whole number, not 3.5."),
    ({"lora-r": "eight"}, "'lora-r' must be a whole number, not 'eight'."),
    ({"epochs": True}, "'epochs' must be a number, not True."),
    ({"learning-rate": [1, 2]}, "'learning-rate' must be a number, not [1, 2]."),
    ({"circular": 3}, "'circular' must be true or false, not 3."),
    ({"strategy": "horovod"}, "'strategy' must be one of ddp, fsdp, deepspeed, not 'horovod'."),
    ({"zero-stage": 1}, "'zero-stage' must be one of 2, 3, not 1."),
    ({"config": "other.yaml"}, "'config' cannot be set in a run file"),
    ({"lora_r": 1, "lora-r": 2}, "'lora-r' is given twice"),
    ({"data": []}, "'data' is an empty list"),
    ({"data": [{"path": "a.json", "wieght": 2}]}, "data entry 1 has the unknown key 'wieght'"),
    ({"data": [{"path": "a.json", "weight": 0}]}, "the weight must be a number above 0"),
    ({"data": [{"path": "a.json", "weight": -1}]}, "the weight must be a number above 0"),
    ({"data": [{"path": "a.json@2", "weight": 3}]}, "gives a weight twice"),
    ({"data": [{"weight": 3}]}, "needs a 'path'"),
    ({"data": [3]}, "must be a path or a {path: ..., weight: ...} entry"),
    (["a", "b"], "must map flag names to values"),
])
def test_bad_run_files_fail_with_one_sentence_naming_the_key(tmp_path, values, message):
    run_file = _write(tmp_path / "run.yaml", values)
    with pytest.raises(ConfigError) as caught:
        _parse(tmp_path, "--config", run_file, "--data", "d.json")
    text = str(caught.value)
    assert message in text and text.startswith(run_file) and "\n" not in text
    assert text.count(". ") == 0 and text.endswith((".", "?"))


def test_unreadable_and_malformed_run_files_are_one_sentence(tmp_path):
    for path, text, message in [(tmp_path / "missing.yaml", None, "Cannot read the run file"),
                                (tmp_path / "bad.yaml", "a: : b", "is not valid YAML: mapping values are not allowed"),
                                (tmp_path / "bad.json", "{\"a\": }", "is not valid JSON")]:
        if text is not None:
            path.write_text(text)
        with pytest.raises(ConfigError, match=message) as caught:
            _parse(tmp_path, "--config", str(path))
        assert "\n" not in str(caught.value)


def test_booleans_nulls_and_yaml_number_spellings_convert_like_flags(tmp_path):
    run_file = _write(tmp_path / "run.yaml", {"data": "d.json", "circular": "false", "force-epochs": "true",
                                              "lora-r": None, "epochs": 2, "learning-rate": 2e-4})
    (tmp_path / "plain.yaml").write_text("data: d.json\nlearning-rate: 1e-4\nmax-seq-length: 512\n")
    cfg = _parse(tmp_path, "--config", run_file)
    assert cfg.circular is False and cfg.force_epochs is True and cfg.lora_r is None
    assert cfg.epochs == 2.0 and isinstance(cfg.epochs, float) and cfg.learning_rate == 2e-4
    plain = _parse(tmp_path, "--config", str(tmp_path / "plain.yaml"))
    assert plain.learning_rate == 1e-4 and plain.max_seq_length == 512  # YAML 1.1 reads 1e-4 as text; --flag does too


def test_a_bad_weight_on_the_command_line_is_a_flag_error(tmp_path):
    for spec in ("a.json@0", "a.json,b.json@-2", "a.json@1e999"):
        with pytest.raises(ConfigError, match="the weight must be a number above 0"):
            _parse(tmp_path, "--data", spec)


def test_the_saved_run_file_reads_back_as_the_same_run(tmp_path):
    home = tmp_path / "model"
    (home / "data").mkdir(parents=True)
    outside = tmp_path / "elsewhere" / "b.jsonl"
    cfg = _parse(home, "--data", f"{home}/data/a.json@3,{outside}@0.5,squad:train", "--circular", "--lora-r", "4",
                 "--resume", "--learning-rate", "1e-3", "--from-adapter", str(home / "sft"))
    values = saved_config(cfg, home / "lora", home)
    assert not {key.replace("-", "_") for key in values} & set(NOT_SAVED)
    assert values["data"] == [{"path": "../data/a.json", "weight": 3}, {"path": str(outside), "weight": 0.5},
                              {"path": "squad:train", "weight": 1}]
    assert values["from-adapter"] == "../sft" and values["output"] is None
    (home / "lora").mkdir()
    (home / "lora" / "run.yaml").write_text(run_file_text(values))
    again = _parse(home, "--config", str(home / "lora" / "run.yaml"))
    expected = replace(cfg, resume=False, config=again.config, data=f"{home}/lora/../data/a.json@3,{outside}@0.5,squad:train",
                       from_adapter=home / "lora" / "../sft")
    assert again == expected
    # the model directory may move: paths inside it are relative to the run file
    assert str(home) not in (home / "lora" / "run.yaml").read_text()
