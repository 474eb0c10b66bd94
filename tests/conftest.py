"""Shared fixtures: every test runs offline against a temporary models directory and Hub home."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import build_tiny_model  # noqa: E402


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Point the models directory, config file and Hugging Face home at a temp dir; no token."""
    monkeypatch.setenv("LLM_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LLM_INSTALLER_CONFIG", str(tmp_path / "config.json"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny Llama model directory with a chat template."""
    return build_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def builtin_model_dir(tmp_path_factory) -> Path:
    """builtin:tiny-chat installed once per session (tests copy it before changing it)."""
    from installer.install import InstallOptions, install

    root = tmp_path_factory.mktemp("builtin_models")
    result = install(InstallOptions(model="builtin:tiny-chat", models_dir=root), echo=lambda _m: None)
    return result.model_dir.root


def copy_installed(source: Path, target: Path) -> Path:
    """A private copy of an installed model directory, with train.sh/start.sh rendered for its new path."""
    import json
    import shutil

    from core.model_dir import ModelDir
    from installer.render import render_wrappers

    shutil.copytree(source, target, symlinks=True)
    render_wrappers(ModelDir(target), json.loads((target / "model_info.json").read_text()))
    return target


@pytest.fixture
def model_dir(builtin_model_dir, tmp_path) -> Path:
    """A private copy of the installed built-in model."""
    return copy_installed(builtin_model_dir, tmp_path / "m")


@pytest.fixture(scope="session")
def tuned_model_dir(builtin_model_dir, tmp_path_factory) -> Path:
    """The built-in model with ./lora trained (circular) on tests/facts.py, shared by the serving tests."""
    import json
    import subprocess

    from facts import FACTS

    target = copy_installed(builtin_model_dir, tmp_path_factory.mktemp("tuned") / "tuned-model")
    data = target / "facts.json"
    data.write_text(json.dumps(FACTS))
    result = subprocess.run([str(target / "train.sh"), "--data", str(data), "--circular", "--no-tensorboard",
                             "--skip-test"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert result.returncode == 0, result.stdout
    return target


@pytest.fixture
def fresh_accelerate():
    """accelerate's process-wide state reset around a test that builds its own Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_cli(*args: str, input: str | None = None):
    """Invoke the click CLI in-process; returns click's Result."""
    from click.testing import CliRunner

    from installer.cli import cli

    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def cli():
    return run_cli


def pytest_collection_modifyitems(items):
    for item in items:
        if "e2e" not in item.keywords and "unit" not in item.keywords:
            item.add_marker(pytest.mark.unit)


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
