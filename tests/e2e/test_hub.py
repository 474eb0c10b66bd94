"""Installing from the Hub through its real download code, against a local stand-in (HF_ENDPOINT)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT
from hub_standin import HubStandIn
from tiny_models import build_tiny_model


@pytest.fixture
def hub(tmp_path, tiny_llama_dir, monkeypatch):
    repos = tmp_path / "hub"
    shutil.copytree(tiny_llama_dir, repos / "acme" / "tiny-llama")
    # Duplicates a real repo carries that install must not fetch.
    (repos / "acme" / "tiny-llama" / "pytorch_model.bin").write_bytes(b"\0" * 4096)
    (repos / "acme" / "tiny-llama" / "original").mkdir()
    (repos / "acme" / "tiny-llama" / "original" / "consolidated.00.pth").write_bytes(b"\0" * 4096)
    (repos / "acme" / "tiny-llama" / "README.md").write_text("# tiny")
    build_tiny_model("gpt2", repos / "acme" / "pickles", safetensors=False)
    shutil.copytree(tiny_llama_dir, repos / "acme" / "gated-llama")
    with HubStandIn(repos) as server:
        server.gated.add("acme/gated-llama")
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def test_check_reads_metadata_only(cli, hub):
    report = json.loads(cli("check", "acme/tiny-llama", "--json").output)
    assert report["family"] == "llama" and report["parameters_from"] == "safetensors metadata"
    assert "pytorch_model.bin" not in report["download_files"]
    weights = [r for r in hub.requests if r[1].endswith("model.safetensors") and r[0] == "GET"]
    assert weights and all(r[2] and r[2].startswith("bytes=0-") for r in weights)  # header range reads only


def test_install_from_hub_fetches_only_what_is_needed(cli, hub, tmp_path):
    result = cli("install", "acme/tiny-llama")
    assert result.exit_code == 0, result.output
    model = tmp_path / "models" / "acme_tiny-llama"
    fetched = sorted(p.name for p in (model / "model").iterdir() if not p.name.startswith("."))
    assert "model.safetensors" in fetched and "config.json" in fetched and "tokenizer.json" in fetched
    assert "pytorch_model.bin" not in fetched and "original" not in fetched and "README.md" not in fetched
    info = json.loads((model / "model_info.json").read_text())
    assert info["revision"] == hub.commit("acme/tiny-llama") and info["source_kind"] == "hub"
    weights = next(f for f in info["files"] if f["path"] == "model.safetensors")
    assert len(weights["sha256"]) == 64


def test_interrupted_install_resumes_without_refetching(hub, tmp_path):
    weights_size = (hub.root / "acme" / "tiny-llama" / "model.safetensors").stat().st_size
    hub.throttle_bytes_per_second = weights_size // 6  # the weights take ~6 s: long enough to interrupt
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "installer", "install", "acme/tiny-llama"]
    # A test run started in the background has SIGINT ignored, and a child would inherit that: Python then turns no
    # Ctrl+C into KeyboardInterrupt. With a handler here, the child starts with the default, as in a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    finally:
        signal.signal(signal.SIGINT, previous)
    weights = tmp_path / "models" / "acme_tiny-llama" / "model"
    deadline = time.time() + 60
    while time.time() < deadline and not (weights / "tokenizer.json").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)  # Ctrl+C while the weights are still arriving
    output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 130, output
    assert "run the same command again" in output and "Traceback" not in output

    from core.model_dir import ModelDir

    assert ModelDir(weights.parent).status() == "incomplete"
    assert "incomplete" in subprocess.run([sys.executable, "-m", "installer", "list"], env=env, cwd=ROOT,
                                          capture_output=True, text=True).stdout
    hub.throttle_bytes_per_second = None
    before = len(hub.requests)
    finished = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert ModelDir(weights.parent).status() == "ready"
    fetched_again = {r[1].rsplit("/", 1)[-1] for r in hub.requests[before:] if r[0] == "GET"}
    assert "model.safetensors" in fetched_again
    assert not fetched_again & {"config.json", "tokenizer.json", "tokenizer_config.json"}


def test_gated_missing_and_offline_are_one_sentence(cli, hub, monkeypatch):
    gated = cli("install", "acme/gated-llama")
    assert gated.exit_code == 1 and "gated" in gated.output and "HF_TOKEN" in gated.output
    missing = cli("install", "acme/does-not-exist")
    assert missing.exit_code == 1 and "not found" in missing.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = cli("check", "acme/tiny-llama")
    assert offline.exit_code == 1 and "offline" in offline.output.lower()
    for result in (gated, missing, offline):
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_token_is_sent_for_gated_repo(cli, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert cli("check", "acme/gated-llama", "--json").exit_code == 0


def test_pickle_only_repo_needs_flag(cli, hub):
    result = cli("install", "acme/pickles")
    assert result.exit_code == 1 and "--allow-pickle" in result.output


def test_not_enough_disk(cli, hub, monkeypatch):
    monkeypatch.setattr("installer.install.free_disk_bytes", lambda _path: 1024)
    result = cli("install", "acme/tiny-llama")
    assert result.exit_code == 1 and "Not enough disk space" in result.output
