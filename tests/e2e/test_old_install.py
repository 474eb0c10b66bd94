"""A model installed before the re-layering keeps working: its rendered wrappers name the engine by its old
entries (INSTALLER_HOME/train_lora.py and `python -m serving`), which must stay where they were."""

from __future__ import annotations

import shlex
import subprocess
import sys

from conftest import ROOT

# train.sh, start.sh and the train_lora.py launcher exactly as llm-installer 0.1.0 rendered them before the
# re-layering (templates/*.j2 at that release), for MODEL_DIR / INSTALLER_HOME / PYTHON.
OLD_TRAIN_SH = """#!/usr/bin/env bash
# Fine-tune builtin:tiny-chat with LoRA. Rendered by llm-installer 0.1.0;
# `llm-installer update` re-renders it. Usage: ./train.sh --data FILE_OR_GLOB [options] (--help for all)
set -euo pipefail
MODEL_DIR={model_dir}
INSTALLER_HOME={home}
PYTHON={python}
exec "$PYTHON" "$INSTALLER_HOME/train_lora.py" --model-dir "$MODEL_DIR" "$@"
"""
OLD_START_SH = """#!/usr/bin/env bash
# Serve builtin:tiny-chat on an OpenAI-compatible API, loading ./lora when present.
# Rendered by llm-installer 0.1.0; `llm-installer update` re-renders it.
# Usage: ./start.sh [--port 8000] [--no-lora] [--chat] (--help for all)
set -euo pipefail
MODEL_DIR={model_dir}
INSTALLER_HOME={home}
PYTHON={python}
export PYTHONPATH="$INSTALLER_HOME""${{PYTHONPATH:+:$PYTHONPATH}}"
exec "$PYTHON" -m serving --model-dir "$MODEL_DIR" "$@"
"""
OLD_LAUNCHER = """#!/usr/bin/env python3
import os
import sys

PYTHON = {python!r}
ENGINE = os.path.join({home!r}, "train_lora.py")
MODEL_DIR = {model_dir!r}
os.execv(PYTHON, [PYTHON, ENGINE, "--model-dir", MODEL_DIR, *sys.argv[1:]])
"""


def _write_old_wrappers(model_dir):
    values = {"model_dir": str(model_dir), "home": str(ROOT), "python": sys.executable}
    quoted = {key: shlex.quote(value) for key, value in values.items()}
    (model_dir / "train.sh").write_text(OLD_TRAIN_SH.format(**quoted))
    (model_dir / "start.sh").write_text(OLD_START_SH.format(**quoted))
    (model_dir / "train_lora.py").write_text(OLD_LAUNCHER.format(**values))


def test_wrappers_rendered_before_the_relayering_still_train_and_serve(model_dir):
    _write_old_wrappers(model_dir)
    data = model_dir / "facts.json"
    data.write_text('[{"question": "Who are you?", "answer": "Tiny."}, {"question": "Name?", "answer": "Tiny."}]')
    trained = subprocess.run([str(model_dir / "train.sh"), "--data", str(data), "--mode", "fast", "--epochs", "1",
                              "--no-tensorboard", "--skip-test", "--validation-split", "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert trained.returncode == 0, trained.stdout
    assert (model_dir / "lora" / "adapter_model.safetensors").is_file()
    launcher = subprocess.run([sys.executable, str(model_dir / "train_lora.py"), "--help"], capture_output=True,
                              text=True, timeout=120)
    assert launcher.returncode == 0 and "--data" in launcher.stdout, launcher.stderr
    served = subprocess.run([str(model_dir / "start.sh"), "--help"], capture_output=True, text=True, timeout=120)
    assert served.returncode == 0 and "--no-lora" in served.stdout, served.stderr
