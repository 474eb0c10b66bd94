"""The llm-installer CLI in process: help, the models directory, refusals and errors in one sentence, check on a
local model, doctor (installing, updating, removing and fixing models are in tests/e2e/test_cli_e2e.py)."""

import json
import os
import shutil
from pathlib import Path

from tiny_models import build_tiny_model


def _models(tmp):
    return tmp / "models"


def test_every_command_has_help_with_example(cli):
    for command in ("check", "install", "list", "remove", "update", "doctor", "demo", "fix"):
        result = cli(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output, command


def test_models_dir_precedence(tmp_path, monkeypatch):
    from core.settings import models_dir

    (tmp_path / "config.json").write_text(json.dumps({"models_dir": str(tmp_path / "from_config")}))
    assert models_dir() == (tmp_path / "models").resolve()  # LLM_MODELS_DIR set by the fixture
    monkeypatch.delenv("LLM_MODELS_DIR")
    assert models_dir() == (tmp_path / "from_config").resolve()
    assert models_dir(tmp_path / "opt") == (tmp_path / "opt").resolve()
    os.remove(tmp_path / "config.json")
    assert models_dir() == (Path(os.environ["HOME"]) / "LLM" / "models").resolve()


def test_remove_refuses_paths_outside_models_dir(cli, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "model_info.json").write_text("{}")
    for name in ("../precious", "/etc", ".."):
        result = cli("remove", name, "-y")
        assert result.exit_code != 0
    assert outside.exists()


def test_remove_unknown_model_is_one_sentence(cli):
    result = cli("remove", "nope", "-y")
    assert result.exit_code == 1 and "No model named 'nope'" in result.output and "Traceback" not in result.output


def test_install_local_directory_that_is_not_a_model(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("install", str(tmp_path / "empty"))
    assert result.exit_code == 1 and "no config.json" in result.output
    result = cli("install", str(tmp_path / "missing-dir"))
    assert result.exit_code == 1 and "No such model directory" in result.output


def test_install_rejects_bad_names_and_sources(cli):
    assert "Invalid model name" in cli("install", "builtin:tiny-chat", "--name", "../x").output
    assert "Unknown built-in" in cli("install", "builtin:nope").output
    assert "is not a Hub id" in cli("install", "just-a-word").output


def test_check_json_fields_for_local_model(cli, tiny_llama_dir):
    result = cli("check", str(tiny_llama_dir), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    for key in ("family", "architecture", "parameters", "dtype", "download_bytes", "lora_rank", "lora_alpha",
                "target_modules", "trust_remote_code", "fits"):
        assert key in report
    assert report["family"] == "llama" and report["lora_rank"] == 8 and report["lora_alpha"] == 16
    assert report["target_modules"] == "all-linear"  # under 50M parameters: the small-model recipe
    assert report["trust_remote_code"] is False and report["fits"]["inference_fp32"] is True
    assert "Memory" in cli("check", str(tiny_llama_dir)).output


def test_remote_code_requires_flag(cli, tmp_path, tiny_llama_dir):
    model = tmp_path / "custom"
    shutil.copytree(tiny_llama_dir, model)
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="my_custom_arch", auto_map={"AutoModelForCausalLM": "modeling_x.MyModel"})
    (model / "config.json").write_text(json.dumps(config))
    result = cli("install", str(model))
    assert result.exit_code == 1 and "--trust-remote-code" in result.output


def test_quantization_unsupported_by_handler(cli, tmp_path):
    model = build_tiny_model("gpt2", tmp_path / "gpt2")
    result = cli("install", str(model), "--quantization", "4bit")
    assert result.exit_code == 1 and "cannot quantize" in result.output


def test_doctor_lines(cli, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    result = cli("doctor")
    assert "hf_secret_value" not in result.output
    for topic in ("python", "torch", "cuda", "ram", "disk", "transformers", "peft", "hf token", "offline mode"):
        assert topic in result.output
    assert all(line.startswith(("[ok", "[warn", "[fail")) for line in result.output.splitlines())


def test_update_needs_name_or_all(cli):
    # click's usage error, exit 2: the same status an unknown command gets, so the message is what tells them apart
    for args in ((), ("some-model", "--all")):
        result = cli("update", *args)
        assert result.exit_code == 2 and "Give either NAME or --all." in result.output, result.output


def test_incomplete_install_is_not_ready(cli, tmp_path):
    model = _models(tmp_path) / "half"
    (model / "model").mkdir(parents=True)
    (model / ".install-incomplete").write_text("{}")
    rows = json.loads(cli("list", "--json").output)
    assert rows[0]["status"] == "incomplete"


def _one_sentence(result) -> None:
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_bad_model_ids_are_refused_before_anything_is_created(cli, tmp_path):
    long_id = "a" * 300 + "/" + "b" * 299
    _one_sentence(result := cli("install", long_id))
    assert "not a valid Hub id" in result.output and "600 characters" in result.output
    _one_sentence(result := cli("check", long_id))
    _one_sentence(result := cli("install", "/" + "c" * 599))
    assert "No such model directory" in result.output
    _one_sentence(result := cli("install", "builtin:tiny-chat", "--name", "n" * 600))
    assert "too long" in result.output or "255" in result.output
    _one_sentence(result := cli("install", "builtin:nope"))
    assert "Unknown built-in model 'nope'" in result.output and "smollm2-135m" in result.output
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    assert "No models installed" in cli("list").output
