"""Hostile inputs whose old failure was unbounded work (issue 21): each runs in a child process under an address-space
limit and a timeout, so a regression fails its test instead of taking the machine down.

The child prints nothing on success but what the test checks; a child that runs out of its limit dies with a
MemoryError, and one that loops past its timeout is killed and fails the test.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEMORY_LIMIT = 2 * 1024**3  # address space: torch and transformers import in well under a gigabyte
TIMEOUT_S = 120  # a bound on a runaway, not a speed check: each case finishes in seconds


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def bounded(code: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run `code` (Python, with the repository on sys.path) in a child bounded in memory and time."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, preexec_fn=_limit_memory,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S)


def cli(*args: str) -> subprocess.CompletedProcess:
    """`llm-installer ARGS`, bounded."""
    return bounded("import sys; from installer.cli import main; sys.argv[0] = 'llm-installer'; main()", *args)


# --- 1. GGUF header lengths ---------------------------------------------------------------------------------


def _gguf_string(data: bytes) -> bytes:
    return struct.pack("<Q", len(data)) + data


def hostile_gguf(path: Path, claim: str) -> Path:
    """A GGUF of ~100 bytes whose header claims 2**40 array elements ('array') or string bytes ('string')."""
    architecture = _gguf_string(b"general.architecture") + struct.pack("<I", 8)
    if claim == "array":  # an array of u8 past the end: gguf's reader loops once per claimed element
        body = (struct.pack("<IQQ", 3, 0, 2) + architecture + _gguf_string(b"llama")
                + _gguf_string(b"tokenizer.ggml.token_type") + struct.pack("<IIQ", 9, 0, 2**40) + b"x")
    else:  # a string past the end: gguf's reader returns what is there and calls it complete
        body = struct.pack("<IQQ", 3, 0, 1) + architecture + struct.pack("<Q", 2**40) + b"llama"
    path.write_bytes(b"GGUF" + body)
    return path


def test_gguf_lengths_past_the_end_are_refused_by_check_and_install(tmp_path):
    for claim in ("array", "string"):
        gguf = hostile_gguf(tmp_path / f"{claim}.gguf", claim)
        for command in (("check", str(gguf)), ("install", str(gguf))):
            result = cli(*command)
            assert result.returncode == 1, result.stdout
            assert "truncated or damaged" in result.stdout and "1,099,511,627,776" in result.stdout, result.stdout
            assert "Traceback" not in result.stdout and len(result.stdout.strip().splitlines()) == 1
    models = Path(os.environ["LLM_MODELS_DIR"])
    assert not models.exists() or not any(models.iterdir())  # refused before any directory was created


# --- 2. YAML billion laughs in a run file ------------------------------------------------------------------

PARSE_RUN_FILE = """
import sys
from training.config import parse_config
from training.errors import ConfigError
try:
    parse_config(["--model-dir", ".", "--data", "x.json", "--config", sys.argv[1]])
except ConfigError as exc:
    print("ConfigError:", exc)
"""


def laughs(levels: int = 10) -> str:
    """YAML whose one value expands to 10**levels strings, in under a kilobyte: the old error message formatted
    it with repr()."""
    lines = ["learning-rate:", '  - &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"  - &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, levels)]
    return "\n".join([*lines, ""])


def test_run_file_billion_laughs_is_one_bounded_sentence(tmp_path):
    for name, text in (("laughs.yaml", laughs()), ("deep.yaml", "learning-rate: " + "[" * 100_000 + "]" * 100_000),
                       ("deep.json", '{"learning-rate": ' + "[" * 100_000 + "]" * 100_000 + "}")):
        (tmp_path / name).write_text(text)
        result = bounded(PARSE_RUN_FILE, str(tmp_path / name), cwd=tmp_path)
        assert result.returncode == 0 and result.stdout.startswith("ConfigError:"), result.stdout[-2000:]
        assert len(result.stdout) < 400 and ("expands to more than" in result.stdout or "nests more" in result.stdout)
    (tmp_path / "huge.yaml").write_text("# padding\n" * 200_000)
    result = bounded(PARSE_RUN_FILE, str(tmp_path / "huge.yaml"), cwd=tmp_path)
    assert "larger than 1024 KiB" in result.stdout, result.stdout[-2000:]


# --- 3. a data glob through symlink loops -------------------------------------------------------------------

LOAD_GLOB = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
from training.data.sources import load_sources
print(sorted(source.origin for source in load_sources(sys.argv[1])))
"""


def test_a_glob_through_symlink_loops_reads_each_file_once_and_says_what_it_skipped(tmp_path):
    data = tmp_path / "outer" / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.json").write_text('[{"text": "a"}]')
    (data / "sub" / "b.json").write_text('[{"text": "b"}]')
    (data / "up").symlink_to("..")  # glob.glob walked these without end: each link doubles the paths
    (data / "sub" / "up").symlink_to("..")
    (data / "sub" / "up2").symlink_to("../..")
    result = bounded(LOAD_GLOB, f"{data}/**/*.json")
    assert result.returncode == 0, result.stdout[-2000:]
    assert result.stdout.strip().endswith(str(sorted([str(data / "a.json"), str(data / "sub" / "b.json")])))
    assert "skipped" in result.stdout and "symlink loops" in result.stdout


# --- 4. a hostile chat template in training and eval ---------------------------------------------------------

LOOPING = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
FLOODING = "{% for i in range(99999) %}{{ 'x' * 1000000 }}{% endfor %}"
RENDER_HOSTILE = """
import sys, types
from pathlib import Path
import handlers.chat_templates as chat_templates
from installer import evaluation
from training.data.tokenize import render_with_tools
from training.modeling import load_tokenizer
chat_templates.RENDER_SECONDS = 1  # the budget's size is not under test: that it ends the render is
model, template = Path(sys.argv[1]), sys.argv[2]
messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
trained = load_tokenizer(model)
trained.chat_template = template
chat_templates.ensure_chat_template(trained, "unused")  # train.sh's path (training/run.py)
adapter = types.SimpleNamespace(chat_template=template, path=Path("/adapters/evil"))
evaluated = evaluation._tokenizer(types.SimpleNamespace(weights=model), adapter, None)  # llm-installer eval's
for tokenizer in (trained, evaluated):
    for render in (lambda: chat_templates.render_chat(tokenizer, messages, True),
                   lambda: render_with_tools(tokenizer, messages, False, None)):
        try:
            render()
            print("rendered")
        except chat_templates.ChatTemplateError as exc:
            print("refused:", exc)
"""


def test_a_hostile_chat_template_is_an_error_in_training_and_eval(tiny_llama_dir):
    for template, words in ((LOOPING, "did not finish rendering"), (FLOODING, "writes more than 32 MiB")):
        result = bounded(RENDER_HOSTILE, str(tiny_llama_dir), template)
        lines = result.stdout.strip().splitlines()
        assert result.returncode == 0 and len(lines) == 4, result.stdout[-3000:]
        assert all(line.startswith("refused:") and words in line for line in lines), lines
        assert "of the adapter in /adapters/evil" in lines[-1] and str(tiny_llama_dir) in lines[0]


# --- 7. the Ollama store's license blob ---------------------------------------------------------------------

READ_OLLAMA = """
import sys
from pathlib import Path
from sources.ollama import resolve
print("license:", resolve("tiny", store=Path(sys.argv[1]), verify=True).license)
"""


def test_a_huge_sparse_license_blob_is_read_bounded(tmp_path, tiny_gguf_bytes):
    import json

    from ollama_store import add_model

    store = tmp_path / "ollama"
    add_model(store, tiny_gguf_bytes, "registry.ollama.ai/library/tiny/latest", license_text="MIT License\n")
    manifest = json.loads((store / "manifests/registry.ollama.ai/library/tiny/latest").read_text())
    digest = next(layer["digest"] for layer in manifest["layers"] if layer["mediaType"].endswith("license"))
    with open(store / "blobs" / digest.replace(":", "-"), "r+b") as blob:
        blob.seek(0)
        blob.write(b"Hostile License " * 8)  # one line, no newline, then 1 GiB of zeros (sparse: no disk used)
        blob.truncate(2**30)
    result = bounded(READ_OLLAMA, str(store))
    assert result.returncode == 0 and result.stdout.startswith("license: Hostile License"), result.stdout[-2000:]
    assert len(result.stdout) < 300


def test_train_sh_with_a_hostile_model_template_ends_in_one_sentence(model_dir):
    import json

    (model_dir / "model" / "chat_template.jinja").write_text(LOOPING)
    data = model_dir / "data.json"
    data.write_text(json.dumps([{"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "hello"}]}] * 4))
    result = subprocess.run([str(model_dir / "train.sh"), "--data", str(data), "--no-tensorboard", "--skip-test"],
                            preexec_fn=_limit_memory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=TIMEOUT_S)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "did not finish rendering one conversation" in result.stdout and "Traceback" not in result.stdout
