"""Rendered values are never executed: hostile model ids, paths and interpreter names land in train.sh,
start.sh and the train_lora.py launcher escaped for their place (bash reads each filter's output back), and
reach the engine unchanged."""

import ast
import json
import os
import shlex
import subprocess
import sys

import pytest

from core.model_dir import ModelDir
from installer import render

HOSTILE = {
    "newline": "x\ntouch PWNED\n#",
    "carriage-return": "x\rtouch PWNED\r",
    "command-substitution": "$(touch PWNED)",
    "backticks": "`touch PWNED`",
    "triple-quotes": 'x"""\nimport os; os.system("touch PWNED")\n"""',
    "quotes": "it's \"quoted\" ';touch PWNED;'",
    "backslashes": "back\\slash\\n\\",
    "non-ascii": "modèle 模型 \u2028touch PWNED\u2029 ✓",
    "expansions": "${IFS}touch${IFS}PWNED;~!*?[a]{b,c}&|<>",
    "undecodable-byte": os.fsdecode(b"bad\xff\nbyte"),
    "control-characters": "a\tb\x1b[31mred\x0c\x0b\x85",
    "leading-dash": "-rf --help",
}

RECORDER = """import json, os, sys
with open(os.environ["RECORD"], "w") as handle:
    json.dump({"argv": sys.argv[1:], "pythonpath": os.environ.get("PYTHONPATH")}, handle)
"""
# The interpreter the wrappers are rendered with records what it was given. A /bin/sh script runs the real Python
# inside: a shebang line cannot hold the interpreter's own path where that path has a space (a checkout under
# "My Projects/"), so the fake must work from any path.
FAKE_PYTHON = f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(RECORDER)} "$@"\n'


def _bash_word(quoted: str) -> bytes:
    return subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, check=True).stdout


@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
def test_each_filter_round_trips_and_stays_on_one_line(value):
    assert _bash_word(render.shell_quote(value)) == os.fsencode(value)
    assert "\n" not in render.shell_quote(value) and "\r" not in render.shell_quote(value)
    assert ast.literal_eval(render.python_literal(value)) == value
    assert ast.literal_eval('"""' + render.docstring_text(value) + '"""') == value
    comment = render.comment_text(value)
    assert len(("#" + comment).splitlines()) == 1 and comment.isprintable()


def _hostile_install(base, name, monkeypatch):
    """Every rendered value hostile at once: model directory, source id, deps dir, installer home, interpreter."""
    home = base / f"home{name}"
    home.mkdir()
    interpreter_dir = base / f"python{name}"
    interpreter_dir.mkdir()
    python = interpreter_dir / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    model = ModelDir(base / f"model{name}")
    model.root.mkdir()
    monkeypatch.setattr(render, "INSTALLER_HOME", home)
    monkeypatch.setenv("LLM_INSTALLER_PYTHON", str(python))
    info = {"source": f"{name}\ntouch {base}/PWNED-source", "handler": "llama", "extra_requirements": ["x"],
            "defaults": {"dtype": "auto", "device": "auto", "quantization": "none"}}
    render.render_wrappers(model, info)
    return model, home


def _run(command, cwd, record):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(command, cwd=cwd, env={**env, "RECORD": str(record)}, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(record.read_text())


@pytest.mark.parametrize("name", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_names_run_nothing_and_reach_the_engine_unchanged(tmp_path, monkeypatch, name):
    base = tmp_path / "base"
    base.mkdir()
    try:
        model, home = _hostile_install(base, name, monkeypatch)
    except (OSError, UnicodeError) as exc:  # a filesystem that refuses such names cannot be attacked with them
        pytest.skip(f"filesystem refuses the name: {exc}")
    root, deps = str(model.root), str(model.deps)
    for script in ("train.sh", "start.sh"):
        subprocess.run(["bash", "-n", str(model.root / script)], check=True)
    ast.parse((model.root / "train_lora.py").read_text(encoding="utf-8"))
    assert all(len(line) < 500 for line in (model.root / "train.sh").read_text(encoding="utf-8").splitlines())

    cwd, record = tmp_path / "cwd", tmp_path / "record.json"
    cwd.mkdir()
    engine = os.path.join(str(home), "train_lora.py")
    started = _run([str(model.root / "start.sh"), "--help"], cwd, record)
    assert started == {"argv": ["-m", "serving", "--model-dir", root, "--help"], "pythonpath": f"{home}:{deps}"}
    trained = _run([str(model.root / "train.sh"), "--help"], cwd, record)
    assert trained == {"argv": [engine, "--model-dir", root, "--help"], "pythonpath": deps}
    launched = _run([sys.executable, str(model.root / "train_lora.py"), "--help"], cwd, record)
    assert launched == {"argv": [engine, "--model-dir", root, "--help"], "pythonpath": deps}

    assert not list(tmp_path.rglob("PWNED*")) and not list(cwd.iterdir())
