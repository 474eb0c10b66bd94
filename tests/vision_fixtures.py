"""Session fixtures of the vision tests: the tiny LLaVA built once, and once installed and trained on coloured
squares (imported by the test modules that use them)."""

from __future__ import annotations

import io
import logging

import pytest
from tiny_vision import build_tiny_llava, colour_dataset


@pytest.fixture(scope="session")
def llava_source(tmp_path_factory):
    """A random tiny LLaVA model directory with its processor."""
    return build_tiny_llava(tmp_path_factory.mktemp("src") / "tiny-llava")


@pytest.fixture(scope="session")
def trained_llava(llava_source, tmp_path_factory):
    """The tiny LLaVA installed with `llm-installer install DIR`, trained by train.sh's engine on coloured squares."""
    from conftest import run_cli

    import train_lora

    root = tmp_path_factory.mktemp("vision")
    result = run_cli("install", str(llava_source), "--name", "tiny-llava", "--models-dir", str(root / "models"))
    assert result.exit_code == 0 and "multimodal (image input): vision tower" in result.output, result.output
    model_dir = root / "models" / "tiny-llava"
    data = colour_dataset(root / "data")
    lines = io.StringIO()
    handler, logger = logging.StreamHandler(lines), logging.getLogger("train")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        status = train_lora.main(["--model-dir", str(model_dir), "--data", str(data), "--epochs", "6",
                                  "--validation-split", "0", "--no-tensorboard", "--skip-test", "--seed", "1"])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert status == 0
    (model_dir / "train-log.txt").write_text(lines.getvalue())
    return model_dir


