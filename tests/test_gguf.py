"""GGUF files as a model source: header-only metadata, conversion to safetensors, and the bad cases."""

import json
import shutil

import pytest
from real_model import smollm2_gguf
from tiny_models import write_tiny_gguf

from llamacpp.gguf_reader import (
    NotGGUFError,
    TruncatedGGUFError,
    UnsupportedGGUFError,
    check_supported,
    read_gguf_info,
)


@pytest.fixture(scope="session")
def tiny_gguf_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny llama as GGUF files: full precision and Q8_0."""
    root = tmp_path_factory.mktemp("gguf")
    write_tiny_gguf(tiny_llama_dir, root / "tiny-F32.gguf")
    write_tiny_gguf(tiny_llama_dir, root / "tiny-Q8_0.gguf", quantization="Q8_0")
    write_tiny_gguf(tiny_llama_dir, root / "weird.gguf", architecture="nosucharch")
    return root


def _parameters(model_dir) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as handle:
        total = 0
        for name in handle.keys():
            count = 1
            for dim in handle.get_slice(name).get_shape():
                count *= dim
            total += count
        return total


def test_header_metadata(tiny_gguf_dir, tiny_llama_dir):
    full = read_gguf_info(tiny_gguf_dir / "tiny-F32.gguf")
    assert (full.architecture, full.quantization, full.dtype) == ("llama", "F32", "float32")
    assert full.parameters == _parameters(tiny_llama_dir) and full.context_length == 256
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_check_reads_the_header_only(cli, tiny_gguf_dir):
    report = json.loads(cli("check", str(tiny_gguf_dir / "tiny-Q8_0.gguf"), "--json").output)
    assert report["family"] == "llama" and report["handler"] == "llama" and report["source_kind"] == "gguf"
    assert report["parameters_from"] == "GGUF header" and report["gguf"]["quantization"] == "Q8_0"
    assert report["gguf"]["installs_as"] == "float16"
    text = cli("check", str(tiny_gguf_dir / "tiny-Q8_0.gguf")).output
    assert "GGUF file:" in text and "dequantized" in text


@pytest.mark.e2e
def test_install_gguf_file_trains_and_serves_like_safetensors(cli, tiny_gguf_dir, tiny_llama_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    result = cli("install", str(tiny_gguf_dir / "tiny-Q8_0.gguf"))
    assert result.exit_code == 0, result.output
    assert "dequantized" in result.output and "converted from GGUF" in result.output
    model = tmp_path / "models" / "tiny-Q8_0"
    info = json.loads((model / "model_info.json").read_text())
    assert info["source_kind"] == "gguf" and info["gguf"]["quantization"] == "Q8_0" and info["dtype"] == "float16"
    assert info["parameters"] == _parameters(tiny_llama_dir) and info["family"] == "llama"
    assert sorted(p.name for p in (model / "model").iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]
    assert json.loads(cli("list", "--json").output)[0]["status"] == "ready"
    # The converted weights are the original ones up to Q8_0's rounding.
    ids = torch.tensor([[1, 5, 9, 30, 100]])
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)(ids).logits
    converted = AutoModelForCausalLM.from_pretrained(model / "model", dtype=torch.float32)(ids).logits
    assert torch.allclose(original, converted, atol=0.05)


@pytest.mark.e2e
def test_install_gguf_from_hub_repository(cli, tiny_gguf_dir, tmp_path, monkeypatch):
    from hub_standin import HubStandIn

    repo = tmp_path / "hub" / "acme" / "tiny-GGUF"
    repo.mkdir(parents=True)
    for name in ("tiny-F32.gguf", "tiny-Q8_0.gguf"):
        shutil.copy(tiny_gguf_dir / name, repo / name)
    (repo / "README.md").write_text("# GGUF builds")
    with HubStandIn(tmp_path / "hub") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        plain = cli("install", "acme/tiny-GGUF")
        assert plain.exit_code == 1 and "--gguf-file" in plain.output and "tiny-Q8_0.gguf" in plain.output
        wrong = cli("install", "acme/tiny-GGUF", "--gguf-file", "tiny-Q4.gguf")
        assert wrong.exit_code == 1 and "tiny-F32.gguf, tiny-Q8_0.gguf" in wrong.output
        result = cli("install", "acme/tiny-GGUF", "--gguf-file", "tiny-F32.gguf")
        assert result.exit_code == 0, result.output
        fetched = [r for r in hub.requests if r[0] == "GET" and r[1].endswith(".gguf")]
        assert {r[1].rsplit("/", 1)[-1] for r in fetched} == {"tiny-F32.gguf"}
    model = tmp_path / "models" / "acme_tiny-GGUF"
    info = json.loads((model / "model_info.json").read_text())
    assert info["source_kind"] == "hub" and info["revision"] and info["gguf"]["file"] == "tiny-F32.gguf"
    assert not (model / ".gguf-download").exists()  # the GGUF is not kept beside its conversion


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


@pytest.mark.e2e
@pytest.mark.real_model
@pytest.mark.slow  # ~55 s on 2 cores, mostly the conversion; the tiny GGUFs above cover the same code paths
def test_install_real_smollm2_gguf(cli, tmp_path):
    """SmolLM2-135M-Instruct's Q4_1 GGUF (tied embeddings, Q4_1 + Q8_0 blocks) installs and answers a general question."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf_file.symlink_to(smollm2_gguf())
    result = cli("install", str(gguf_file), "--name", "smol")
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "models" / "smol" / "model_info.json").read_text())
    assert info["gguf"]["quantization"] == "Q4_1" and info["parameters"] == 134_515_008
    assert info["license"] == "apache-2.0" and info["dtype"] == "bfloat16"
    weights = tmp_path / "models" / "smol" / "model"
    tokenizer = AutoTokenizer.from_pretrained(weights)
    model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    answer = tokenizer.decode(model.generate(**prompt, max_new_tokens=20, do_sample=False)[0][
        prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer
