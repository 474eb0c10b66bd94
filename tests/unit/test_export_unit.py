"""`llm-installer export` without a model: its help, and llama.cpp's converter plumbing (extracted from the
sdist, located in a checkout, failures told in one sentence; no download)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest


def test_export_is_in_help(cli):
    result = cli("export", "--help")
    assert result.exit_code == 0 and "Example" in result.output
    for fmt in ("merged", "gguf", "lora-gguf", "ollama"):
        assert fmt in result.output


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    tar.addfile(member, io.BytesIO(data))


def test_extract_takes_only_the_converter_files(tmp_path):
    from llamacpp.converter import _extract

    archive = tmp_path / "llama_cpp_python-9.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/llama.py",
                     "gguf-py/gguf/__init__.py", "LICENSE", "src/llama.cpp", "gguf-py/tests/t.py",
                     "convert_hf_to_gguf_update.py"):
            _add(tar, f"llama_cpp_python-9/vendor/llama.cpp/{name}")
        _add(tar, "llama_cpp_python-9/llama_cpp/__init__.py")
        _add(tar, "llama_cpp_python-9/vendor/llama.cpp/../../../evil.py")
    _extract(archive, tmp_path / "out")
    found = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert found == ["LICENSE", "conversion/llama.py", "convert_hf_to_gguf.py", "convert_lora_to_gguf.py",
                     "gguf-py/gguf/__init__.py"]
    assert not (tmp_path / "evil.py").exists()


def test_checkout_must_hold_the_converters(tmp_path, monkeypatch):
    from llamacpp.converter import CHECKOUT_ENV, ConverterError, locate

    with pytest.raises(ConverterError, match="is not a llama.cpp checkout"):
        locate(tmp_path)
    for name in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "gguf-py/gguf/__init__.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    monkeypatch.setenv(CHECKOUT_ENV, str(tmp_path))
    assert locate().root == tmp_path.resolve() and "checkout" in locate().origin


@pytest.mark.parametrize("output,returncode,expected", [
    ("NotImplementedError: BPE pre-tokenizer was not recognized - update get_vocab_base_pre()", 1,
     "does not recognise this model's tokenizer"),
    ("ERROR:hf-to-gguf:Model FooForCausalLM is not supported", 1, "cannot convert the FooForCausalLM architecture"),
    ("NotImplementedError: Architecture 'BarModel' not supported!", 1, "cannot convert the BarModel architecture"),
    ("ModuleNotFoundError: No module named 'sentencepiece'", 1, "needs the Python package 'sentencepiece'"),
    ("OSError: [Errno 28] No space left on device", 1, "The disk filled up"),
    ("", -9, "ran out of memory"),
    ("INFO:x\nValueError: something odd\n", 1, "failed: ValueError: something odd."),
])
def test_converter_failures_are_one_sentence(output, returncode, expected):
    from llamacpp.converter import Converter, explain_failure

    message = explain_failure(output, returncode, Converter(Path("/x"), "llama.cpp test"), "convert_hf_to_gguf.py")
    assert expected in message and "\n" not in message and message.endswith(".")
