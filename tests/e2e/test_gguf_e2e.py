"""Installing GGUF files: a local file trains and serves like safetensors, a Hub repository of GGUFs, and the
real SmolLM2 GGUF (slow)."""

import json
import shutil

import pytest
from real_model import smollm2_gguf
from tiny_models import safetensors_parameters


def test_install_gguf_file_trains_and_serves_like_safetensors(cli, tiny_gguf_dir, tiny_llama_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    result = cli("install", str(tiny_gguf_dir / "tiny-Q8_0.gguf"))
    assert result.exit_code == 0, result.output
    assert "dequantized" in result.output and "converted from GGUF" in result.output
    model = tmp_path / "models" / "tiny-Q8_0"
    info = json.loads((model / "model_info.json").read_text())
    assert info["source_kind"] == "gguf" and info["gguf"]["quantization"] == "Q8_0" and info["dtype"] == "float16"
    assert info["parameters"] == safetensors_parameters(tiny_llama_dir) and info["family"] == "llama"
    assert sorted(p.name for p in (model / "model").iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]
    assert json.loads(cli("list", "--json").output)[0]["status"] == "ready"
    # The converted weights are the original ones up to Q8_0's rounding.
    ids = torch.tensor([[1, 5, 9, 30, 100]])
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)(ids).logits
    converted = AutoModelForCausalLM.from_pretrained(model / "model", dtype=torch.float32)(ids).logits
    assert torch.allclose(original, converted, atol=0.05)


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
