"""The llm-installer CLI as a user runs it: check, install, list, remove, update, doctor."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from tiny_models import build_tiny_model


def _models(tmp):
    return tmp / "models"


def test_help_and_list_do_not_import_torch(tmp_path):
    code = ("import sys; from installer.cli import cli\n"
            "try:\n    cli(['list'])\nexcept SystemExit:\n    pass\n"
            "print('heavy', 'torch' in sys.modules or 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    assert "heavy False" in out


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


@pytest.mark.e2e
def test_install_builtin_then_list_update_remove(cli, tmp_path):
    result = cli("install", "builtin:tiny-chat")
    assert result.exit_code == 0, result.output
    model = _models(tmp_path) / "builtin_tiny-chat"
    info = json.loads((model / "model_info.json").read_text())
    assert info["complete"] and info["handler"] == "llama" and info["family"] == "llama"
    assert info["parameters"] > 100_000 and info["source"] == "builtin:tiny-chat"
    assert all(len(f.get("sha256", "x" * 64)) == 64 for f in info["files"])
    for wrapper in ("train.sh", "start.sh", "train_lora.py"):
        assert os.access(model / wrapper, os.X_OK)
    assert not (model / "installer").exists() and not list(model.rglob("cli.py"))

    again = cli("install", "builtin:tiny-chat")
    assert again.exit_code == 0 and "already installed" in again.output

    listing = json.loads(cli("list", "--json").output)
    assert listing[0]["name"] == "builtin_tiny-chat" and listing[0]["status"] == "ready"
    assert listing[0]["adapter"] == "-" and listing[0]["size_bytes"] > 0
    assert "ready" in cli("list").output

    (model / "train.sh").write_text("stale")
    (model / "lora").mkdir()
    (model / "lora" / "adapter_config.json").write_text("{}")
    weights_before = (model / "model" / "model.safetensors").stat().st_mtime_ns
    assert cli("update", "builtin_tiny-chat").exit_code == 0
    assert "train_lora.py" in (model / "train.sh").read_text()
    assert (model / "lora" / "adapter_config.json").read_text() == "{}"
    assert (model / "model" / "model.safetensors").stat().st_mtime_ns == weights_before
    assert "yes" in json.loads(cli("list", "--json").output)[0]["adapter"]

    refused = cli("remove", "builtin_tiny-chat", input="n\n")
    assert refused.exit_code != 0 and model.exists()
    assert cli("remove", "builtin_tiny-chat", "-y").exit_code == 0
    assert not model.exists()


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


@pytest.mark.e2e
def test_install_local_directory_hard_links(cli, tmp_path, tiny_llama_dir):
    source = tmp_path / "src model"
    shutil.copytree(tiny_llama_dir, source)
    result = cli("install", str(source), "--name", "my-llama", "--dtype", "float32", "--device", "cpu")
    assert result.exit_code == 0, result.output
    installed = _models(tmp_path) / "my-llama" / "model" / "model.safetensors"
    assert installed.stat().st_ino == (source / "model.safetensors").stat().st_ino
    info = json.loads((installed.parent.parent / "model_info.json").read_text())
    assert info["defaults"] == {"quantization": "none", "dtype": "float32", "device": "cpu"}
    assert "hard-linked" in result.output


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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_check_counts_pickle_model_from_config(cli, tmp_path):
    model = build_tiny_model("gpt2", tmp_path / "gpt2", safetensors=False)
    report = json.loads(cli("check", str(model), "--json").output)
    assert report["parameters_from"] == "config.json" and report["parameters"] > 0
    assert report["target_modules"] == "all-linear"  # a tiny model: the small-model recipe
    refused = cli("install", str(model))
    assert refused.exit_code == 1 and "--allow-pickle" in refused.output
    allowed = cli("install", str(model), "--allow-pickle")
    assert allowed.exit_code == 0 and "Warning" in allowed.output


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
    assert cli("update").exit_code == 2


def test_incomplete_install_is_not_ready(cli, tmp_path):
    model = _models(tmp_path) / "half"
    (model / "model").mkdir(parents=True)
    (model / ".install-incomplete").write_text("{}")
    rows = json.loads(cli("list", "--json").output)
    assert rows[0]["status"] == "incomplete"


@pytest.mark.e2e
def test_fix_rerenders_wrappers_and_explains_missing_cuda(cli, model_dir):
    (model_dir / "train.sh").unlink()
    result = cli("fix", str(model_dir))
    assert result.exit_code == 0 and "re-rendered" in result.output
    assert (model_dir / "train.sh").is_file()
    import torch

    if not torch.cuda.is_available():
        cuda = cli("fix", str(model_dir), "--fix-cuda")
        assert cuda.exit_code == 1 and "sees no CUDA GPU" in cuda.output
    assert cli("fix", "no-such-model").exit_code == 1


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


@pytest.mark.e2e
def test_fix_and_update_on_a_damaged_model_info(cli, builtin_model_dir, tmp_path):
    from conftest import copy_installed

    model = copy_installed(builtin_model_dir, _models(tmp_path) / "damaged")
    info = json.loads((model / "model_info.json").read_text())
    del info["source"]
    (model / "model_info.json").write_text(json.dumps(info))
    _one_sentence(result := cli("fix", str(model)))
    assert "no valid 'source'" in result.output and "--force" in result.output
    _one_sentence(cli("update", "damaged"))
    skipped = cli("update", "--all")
    assert skipped.exit_code == 0 and "Skipped damaged" in skipped.output
