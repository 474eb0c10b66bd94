"""GGUF files as a model source: header-only metadata, conversion to safetensors, and the bad cases (installing
one, and installing from the Hub, are in tests/e2e/test_gguf_e2e.py)."""

import json

import pytest
from tiny_models import safetensors_parameters, write_tiny_gguf

from llamacpp.gguf_reader import (
    NotGGUFError,
    TruncatedGGUFError,
    UnsupportedGGUFError,
    check_supported,
    read_gguf_info,
)


def test_header_metadata(tiny_gguf_dir, tiny_llama_dir):
    full = read_gguf_info(tiny_gguf_dir / "tiny-F32.gguf")
    assert (full.architecture, full.quantization, full.dtype) == ("llama", "F32", "float32")
    assert full.parameters == safetensors_parameters(tiny_llama_dir) and full.context_length == 256
    quantized = read_gguf_info(tiny_gguf_dir / "tiny-Q8_0.gguf")
    assert quantized.quantization == "Q8_0" and quantized.dtype == "float16"
    assert quantized.file_bytes == (tiny_gguf_dir / "tiny-Q8_0.gguf").stat().st_size < full.file_bytes / 3


def test_bad_files_are_one_sentence(tiny_gguf_dir, tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(NotGGUFError, match="not a GGUF file"):
        read_gguf_info(text)
    truncated = tmp_path / "cut.gguf"
    data = (tiny_gguf_dir / "tiny-F32.gguf").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedGGUFError, match="truncated"):
        read_gguf_info(truncated)
    header_cut = tmp_path / "header.gguf"
    header_cut.write_bytes(data[:200])
    with pytest.raises(TruncatedGGUFError, match="truncated"):
        read_gguf_info(header_cut)
    with pytest.raises(UnsupportedGGUFError, match="'nosucharch'.*does not support"):
        check_supported(read_gguf_info(tiny_gguf_dir / "weird.gguf"))


def test_bad_gguf_installs_create_nothing(cli, tiny_gguf_dir, tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    data = (tiny_gguf_dir / "tiny-F32.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 1000])
    for path, words in ((text, "not a GGUF file"), (tmp_path / "cut.gguf", "truncated"),
                        (tiny_gguf_dir / "weird.gguf", "does not support"), (tmp_path / "absent.gguf", "No such GGUF")):
        result = cli("install", str(path))
        assert result.exit_code == 1 and words in result.output, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_check_reads_the_header_only(cli, tiny_gguf_dir):
    report = json.loads(cli("check", str(tiny_gguf_dir / "tiny-Q8_0.gguf"), "--json").output)
    assert report["family"] == "llama" and report["handler"] == "llama" and report["source_kind"] == "gguf"
    assert report["parameters_from"] == "GGUF header" and report["gguf"]["quantization"] == "Q8_0"
    assert report["gguf"]["installs_as"] == "float16"
    text = cli("check", str(tiny_gguf_dir / "tiny-Q8_0.gguf")).output
    assert "GGUF file:" in text and "dequantized" in text


def test_tied_embeddings_convert(tiny_llama_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from llamacpp.gguf_reader import convert_gguf

    gguf_file = write_tiny_gguf(tiny_llama_dir, tmp_path / "tied.gguf", tied=True)
    convert_gguf(gguf_file, tmp_path / "out", echo=lambda _m: None)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    assert model.config.tie_word_embeddings
    assert torch.equal(model.get_output_embeddings().weight, model.get_input_embeddings().weight)
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    assert torch.equal(model.get_input_embeddings().weight, original.get_input_embeddings().weight)


def test_gguf_file_only_for_hub_sources(cli, tiny_gguf_dir):
    result = cli("install", str(tiny_gguf_dir / "tiny-F32.gguf"), "--gguf-file", "x.gguf")
    assert result.exit_code == 1 and "--gguf-file" in result.output
