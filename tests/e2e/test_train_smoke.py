"""train.sh in an installed model's directory: adapter outputs and clean data errors."""

import json
import subprocess

import pytest
from conftest import ROOT

EXAMPLES = ROOT / "examples" / "data"


def _train(model_dir, *args):
    return subprocess.run([str(model_dir / "train.sh"), "--no-tensorboard", "--skip-test", *args],
                          capture_output=True, text=True, timeout=300)


def test_train_writes_adapter_and_keeps_previous(model_dir):
    result = _train(model_dir, "--data", str(EXAMPLES / "quickstart_qa.json"), "--mode", "fast")
    assert result.returncode == 0, result.stdout + result.stderr
    lora = model_dir / "lora"
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "adapter_info.json"):
        assert (lora / name).is_file(), name
    info = json.loads((lora / "adapter_info.json").read_text())
    assert info["mode"] == "fast" and info["stop_reason"] and info["data"][0]["sha256"]
    assert "Stopped:" in result.stdout and "Training report" in result.stdout
    assert (model_dir / "training_history.png").is_file() and (model_dir / "checkpoints" / "last").is_dir()
    again = _train(model_dir, "--data", str(EXAMPLES / "alpaca_sample.json"), "--mode", "fast")
    assert again.returncode == 0, again.stderr
    assert (model_dir / "lora.prev" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(("content", "message"), [
    ("[{\"question\": \"a\", \"answer\": \"b\"},", "malformed JSON at line"),
    ("[]", "dataset is empty"),
    ("[{\"foo\": 1}]", "unknown dataset format"),
    ("[{\"question\": \"only a question\"}, {\"question\": \"q\"}]", "unknown dataset format"),
])
def test_bad_data_is_one_clear_line(model_dir, tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = _train(model_dir, "--data", str(bad))
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert not (model_dir / "lora").exists()


def test_missing_data_flag_and_bad_mode(model_dir):
    # exit 2 is also what bash gives for a broken train.sh, so the message is what shows the engine refused
    missing = _train(model_dir)
    assert missing.returncode == 2 and "Error: --data is required" in missing.stderr, missing.stdout + missing.stderr
    assert "Traceback" not in missing.stderr
    result = _train(model_dir, "--data", "x.json", "--mode", "turbo")
    assert result.returncode == 2 and "Error: Unknown mode 'turbo'" in result.stderr, result.stdout + result.stderr
