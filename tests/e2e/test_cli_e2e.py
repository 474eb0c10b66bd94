"""The llm-installer CLI as a user runs it: install, list, update, remove and fix on installed models, and a
bare `list` that never imports torch."""

import json
import os
import shutil
import subprocess
import sys

from conftest import ROOT, copy_installed
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


def test_check_counts_pickle_model_from_config(cli, tmp_path):
    model = build_tiny_model("gpt2", tmp_path / "gpt2", safetensors=False)
    report = json.loads(cli("check", str(model), "--json").output)
    assert report["parameters_from"] == "config.json" and report["parameters"] > 0
    assert report["target_modules"] == "all-linear"  # a tiny model: the small-model recipe
    refused = cli("install", str(model))
    assert refused.exit_code == 1 and "--allow-pickle" in refused.output
    allowed = cli("install", str(model), "--allow-pickle")
    assert allowed.exit_code == 0 and "Warning" in allowed.output


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


def test_fix_and_update_on_a_damaged_model_info(cli, builtin_model_dir, tmp_path):
    model = copy_installed(builtin_model_dir, _models(tmp_path) / "damaged")
    info = json.loads((model / "model_info.json").read_text())
    del info["source"]
    (model / "model_info.json").write_text(json.dumps(info))
    _one_sentence(result := cli("fix", str(model)))
    assert "no valid 'source'" in result.output and "--force" in result.output
    _one_sentence(cli("update", "damaged"))
    skipped = cli("update", "--all")
    assert skipped.exit_code == 0 and "Skipped damaged" in skipped.output
