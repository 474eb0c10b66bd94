"""Shared fixtures, and the rules every test runs under.

Tests live in tests/unit (in process, seconds: no subprocess, no model install, no server) or tests/e2e (what a
user does: the CLI or ./train.sh / ./start.sh as processes, installs, training, servers); the folder gives the
`unit` or `e2e` mark. Helpers shared between test modules live here in tests/ (on sys.path), never in a test module.

Nothing of the user's environment reaches a test: the Hugging Face, XDG, Ollama and llm-installer variables are
cleared and HOME is a throwaway directory from the moment this file is imported, before anything imports
huggingface_hub (which reads its settings once, at import); each test then gets its own models directory, config
file, HOME and Hugging Face home, and no token.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
KINDS = ("unit", "e2e")

# --- isolation from the user's environment, at import -----------------------------------------------------

KEPT = {"LLM_INSTALLER_TEST_CACHE", "LLM_INSTALLER_REQUIRE_BROWSER"}  # knobs of the test suite itself
LEAKY_PREFIXES = ("HF_", "HUGGINGFACE_", "HUGGING_FACE_", "TRANSFORMERS_", "LLM_", "OLLAMA_")
LEAKY = {"XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "VLLM_API_KEY"}


def leaks(name: str) -> bool:
    """Whether an environment variable of the user's could change what the code under test does."""
    return name not in KEPT and (name in LEAKY or name.startswith(LEAKY_PREFIXES))


for _name in [n for n in os.environ if leaks(n)]:
    del os.environ[_name]
SESSION_HOME = Path(tempfile.mkdtemp(prefix="llm-installer-tests-")) / "home"
SESSION_HOME.mkdir()
os.environ["HOME"] = str(SESSION_HOME)  # session fixtures run before the per-test `isolated` below
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
if "huggingface_hub.constants" in sys.modules:  # imported before this file (by a plugin): read the clean env again
    import importlib

    importlib.reload(sys.modules["huggingface_hub.constants"])

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(TESTS))

from tiny_models import build_tiny_model, write_tiny_gguf  # noqa: E402


def pytest_unconfigure(config):
    shutil.rmtree(SESSION_HOME.parent, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Point the models directory, config file, HOME and Hugging Face home at a temp dir; no token, online."""
    for name in [n for n in os.environ if leaks(n)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LLM_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LLM_INSTALLER_CONFIG", str(tmp_path / "config.json"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # read once at import: a test that turns offline mode on does so through the env
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False, raising=False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"), raising=False)
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "stored_tokens"),
                            raising=False)
    hidden_before = "bitsandbytes" in sys.modules and sys.modules["bitsandbytes"] is None
    yield tmp_path
    if sys.modules.get("bitsandbytes", "") is None and not hidden_before:
        del sys.modules["bitsandbytes"]  # an in-process train.sh or start.sh hid it (core/imports.py): not the next test


# --- the folder gives the kind ------------------------------------------------------------------------------


def kind_of(path: Path) -> str | None:
    """'unit' or 'e2e' for a test file in tests/unit or tests/e2e; None elsewhere."""
    try:
        parts = Path(path).resolve().relative_to(TESTS).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 and parts[0] in KINDS else None


def pytest_collection_modifyitems(items):
    for item in items:
        if TESTS not in Path(item.path).resolve().parents:
            continue
        kind = kind_of(item.path)
        if kind is None:
            raise pytest.UsageError(f"{item.nodeid}: test modules live in tests/unit or tests/e2e, which give their mark")
        other = "e2e" if kind == "unit" else "unit"
        if item.get_closest_marker(other):
            raise pytest.UsageError(f"{item.nodeid} is marked {other} but lives in tests/{kind}: move it instead")
        item.add_marker(getattr(pytest.mark, kind))


# --- models ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny Llama model directory with a chat template."""
    return build_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def tiny_gguf_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny llama as GGUF files: full precision and Q8_0, and one of an unknown architecture."""
    root = tmp_path_factory.mktemp("gguf")
    write_tiny_gguf(tiny_llama_dir, root / "tiny-F32.gguf")
    write_tiny_gguf(tiny_llama_dir, root / "tiny-Q8_0.gguf", quantization="Q8_0")
    write_tiny_gguf(tiny_llama_dir, root / "weird.gguf", architecture="nosucharch")
    return root


@pytest.fixture(scope="session")
def tiny_gguf_bytes(tiny_llama_dir, tmp_path_factory) -> bytes:
    """The tiny llama as a Q8_0 GGUF, as an Ollama store blob holds it."""
    return write_tiny_gguf(tiny_llama_dir, tmp_path_factory.mktemp("ollama") / "tiny.gguf",
                           quantization="Q8_0").read_bytes()


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
