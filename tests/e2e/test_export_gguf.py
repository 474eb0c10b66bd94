"""GGUF exports through llama.cpp's own converters (fetched once from the pinned llama-cpp-python sdist and
cached across runs): loaded back with transformers' GGUF loader, read with the gguf package, handed to a
fake `ollama`; converter failures told in one sentence.

llama.cpp identifies BPE tokenizers by a hash of their pre-tokenizer, so a locally trained test tokenizer is
refused (tested below); the successful conversions use a tiny Llama with SmolLM2-135M-Instruct's real
tokenizer, and the real SmolLM2 model in the slow tier.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from export_helpers import add_adapter, install_local, leftovers

from export.gguf import mark_path
from llamacpp import converter as llamacpp


@pytest.fixture(scope="session")
def converter_dir() -> Path:
    """The pinned converter, fetched once into the test cache (kept between runs, like the real test model)."""
    from real_model import test_cache_root

    target = test_cache_root() / "llama.cpp" / llamacpp.LLAMA_CPP_PYTHON_VERSION
    if not (target / llamacpp.COMPLETE_MARKER).is_file():
        llamacpp.fetch(target, echo=lambda _m: None)
    return target


@pytest.fixture
def converter(converter_dir, monkeypatch, tmp_path) -> Path:
    """Exports in this test convert with the cached converter; their logs go to the test's own cache."""
    monkeypatch.setenv(llamacpp.CHECKOUT_ENV, str(converter_dir))
    monkeypatch.setenv(llamacpp.CACHE_ENV, str(tmp_path / "cache"))
    return converter_dir


@pytest.fixture(scope="session")
def smol_tokenizer_model(tmp_path_factory) -> Path:
    """A tiny random Llama (2 layers, hidden 64) with SmolLM2-135M-Instruct's tokenizer and chat template."""
    import torch
    from real_model import smollm2_model_dir
    from transformers import AutoModelForCausalLM, LlamaConfig

    source = smollm2_model_dir()
    dest = tmp_path_factory.mktemp("tiny-smol") / "tiny-smol"
    dest.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy2(source / name, dest / name)
    real = json.loads((source / "config.json").read_text())
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, vocab_size=real["vocab_size"],
                         bos_token_id=real["bos_token_id"], eos_token_id=real["eos_token_id"],
                         pad_token_id=real.get("pad_token_id"), tie_word_embeddings=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(dest)
    return dest


@pytest.fixture
def tiny_smol(smol_tokenizer_model, tmp_path) -> Path:
    root = install_local(smol_tokenizer_model, tmp_path / "models", "tiny")
    add_adapter(root, targets=["q_proj", "v_proj", "down_proj"], rank=8)
    return root


def _prompt(tokenizer):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)["input_ids"]


def assert_gguf_answers_like_start_sh(model_root: Path, gguf: Path, new_tokens: int = 12,
                                      check_tokenizer: bool = False) -> None:
    """transformers' GGUF loader (float32) continues greedily exactly as base + adapter (PEFT) does; with
    `check_tokenizer`, the tokenizer rebuilt from the GGUF has the chat template and eos too (slow: it
    rebuilds the BPE merges)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_root / "model"))
    ids = _prompt(tokenizer)
    reference = AutoModelForCausalLM.from_pretrained(str(model_root / "model"), dtype=torch.float32)
    reference = PeftModel.from_pretrained(reference, str(model_root / "lora")).eval()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference.generate(ids, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens)
        got = loaded.generate(ids, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens)
        assert (reference(ids).logits - loaded(ids).logits).abs().max().item() < 1e-3
    assert got[0].tolist() == expected[0].tolist()
    if not check_tokenizer:
        return
    gguf_tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert gguf_tokenizer.chat_template == tokenizer.chat_template
    assert gguf_tokenizer.eos_token == tokenizer.eos_token


def gguf_fields(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}


@pytest.mark.real_model
def test_gguf_f32_loads_in_transformers_and_answers_like_base_plus_adapter(tiny_smol, converter, cli):
    result = cli("export", str(tiny_smol), "--format", "gguf", "--outtype", "f32", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    gguf = Path(report["path"])
    assert gguf == tiny_smol / "exports" / "tiny-tuned-f32.gguf" and report["bytes"] == gguf.stat().st_size
    assert_gguf_answers_like_start_sh(tiny_smol, gguf)
    fields = gguf_fields(gguf)
    assert fields["general.architecture"] == "llama" and fields["general.name"] == "tiny-tuned"
    assert fields["tokenizer.ggml.pre"] == "smollm" and "<|im_start|>" in fields["tokenizer.chat_template"]
    assert fields["tokenizer.ggml.eos_token_id"] == json.loads(
        (tiny_smol / "model" / "config.json").read_text())["eos_token_id"]
    # the GGUF and the hidden mark that makes it replaceable by a later export (never a user's own file)
    assert not leftovers(tiny_smol) and sorted(p.name for p in (tiny_smol / "exports").iterdir()) == sorted(
        [gguf.name, mark_path(gguf).name])
    assert (Path(os.environ[llamacpp.CACHE_ENV]) / "logs" / "tiny-convert_hf_to_gguf.log").is_file()


@pytest.mark.real_model
def test_lora_gguf_holds_the_adapter_tensors(tiny_smol, converter):
    import torch
    from gguf import GGUFReader
    from safetensors.torch import load_file

    from export.pipeline import export_model

    result = export_model(tiny_smol, "lora-gguf", outtype="f32", echo=lambda _m: None)
    assert result.path == tiny_smol / "exports" / "tiny-lora-f32.gguf"
    fields = gguf_fields(result.path)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 16.0 and fields["general.architecture"] == "llama"
    tensors = {t.name: t for t in GGUFReader(str(result.path)).tensors}
    names = {"attn_q", "attn_v", "ffn_down"}
    assert set(tensors) == {f"blk.{i}.{n}.weight.lora_{ab}" for i in range(2) for n in names for ab in "ab"}
    weights = load_file(str(tiny_smol / "lora" / "adapter_model.safetensors"))
    expected = weights["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"]
    got = torch.from_numpy(tensors["blk.1.ffn_down.weight.lora_b"].data.copy()).reshape(expected.shape)
    assert torch.allclose(got, expected)


@pytest.mark.real_model
def test_ollama_directory_and_create_with_a_fake_ollama(tiny_smol, converter, cli, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "ollama-called.json"
    fake = bin_dir / "ollama"
    fake.write_text("#!/bin/sh\n"
                    f"python3 -c 'import json, os, sys; json.dump({{\"args\": sys.argv[1:], \"cwd\": os.getcwd(), "
                    f"\"modelfile\": open(\"Modelfile\").read()}}, open(\"{record}\", \"w\"))' \"$@\"\n"
                    "echo 'success'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "for-ollama"
    # The base model alone (it carries its template, so it converts without a merged copy; the merge is
    # covered above): what the Modelfile and `ollama create` see is the same.
    result = cli("export", str(tiny_smol), "--format", "ollama", "--outtype", "q8_0", "--out", str(out),
                 "--create", "my-tuned", "--no-lora")
    assert result.exit_code == 0, result.output
    assert "Modelfile: ChatML template" in result.output and "ollama run my-tuned" in result.output
    called = json.loads(record.read_text())
    assert called["args"] == ["create", "my-tuned", "-f", "Modelfile"] and Path(called["cwd"]) == out
    modelfile = (out / "Modelfile").read_text()
    assert called["modelfile"] == modelfile
    assert "FROM ./tiny-base-q8_0.gguf\n" in modelfile and (out / "tiny-base-q8_0.gguf").is_file()
    assert 'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile
    assert gguf_fields(out / "tiny-base-q8_0.gguf")["general.file_type"] == 7  # MOSTLY_Q8_0
    assert "--no-lora: exporting the base model" in result.output and "Checking that" not in result.output
    assert json.loads((out / "export_info.json").read_text())["format"] == "ollama"


def test_failing_ollama_create_keeps_the_finished_export(tmp_path, monkeypatch):
    from core.model_dir import ModelDir
    from export.ollama import offer_create
    from export.pipeline import ExportError, Job

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ollama").write_text("#!/bin/sh\necho 'Error: could not connect to ollama app, is it running?'\nexit 1\n")
    (bin_dir / "ollama").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    job = Job(ModelDir(tmp_path), {}, "ollama", "f16", None, None, lambda _m: None)
    with pytest.raises(ExportError, match="could not connect to ollama app.*the export in .* is complete"):
        offer_create(tmp_path, "mine", job)
    offer_create(tmp_path, None, job)
    assert "or export with --create NAME" in job.notes[-1]


def test_unknown_pre_tokenizer_is_one_sentence_and_leaves_nothing(tiny_llama_dir, converter, tmp_path, cli):
    root = install_local(tiny_llama_dir, tmp_path / "models", "local-tok")
    add_adapter(root)
    result = cli("export", str(root), "--format", "gguf")
    assert result.exit_code == 1
    message = result.output.strip().splitlines()[-1]
    assert "does not recognise this model's tokenizer" in message and "--llama-cpp" in message
    assert "full output in" in message and "Traceback" not in result.output
    assert "Loading" not in result.output  # refused by the vocabulary check, before the merge
    assert not list((root / "exports").iterdir())


def test_four_bit_types_need_llama_cpps_quantizer_and_lora_gguf_refuses_them(tiny_smol, cli, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "llama_cpp" else real_find_spec(name, *args))
    missing = cli("export", str(tiny_smol), "--format", "ollama", "--outtype", "q4_k_m")
    assert missing.exit_code == 1 and "setup --engine llama.cpp" in missing.output, missing.output
    assert len(missing.output.strip().splitlines()) == 1 and "Traceback" not in missing.output
    adapter = cli("export", str(tiny_smol), "--format", "lora-gguf", "--outtype", "q4_0")
    assert adapter.exit_code == 1 and "lora-gguf writes the adapter in" in adapter.output, adapter.output
    assert not (tiny_smol / "exports").exists() or not list((tiny_smol / "exports").iterdir())


@pytest.mark.real_model
def test_q4_gguf_is_made_by_llama_cpps_quantizer(tiny_smol, converter, cli):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed on demand (setup --engine llama.cpp)")
    from gguf import GGMLQuantizationType, GGUFReader

    result = cli("export", str(tiny_smol), "--format", "gguf", "--outtype", "q4_0", "--json")
    assert result.exit_code == 0, result.output
    gguf = Path(json.loads(result.stdout)["path"])
    assert gguf.name == "tiny-tuned-q4_0.gguf"
    assert sorted(p.name for p in gguf.parent.iterdir()) == sorted([gguf.name, mark_path(gguf).name])
    types = {tensor.name: tensor.tensor_type for tensor in GGUFReader(str(gguf)).tensors}
    assert types["blk.0.attn_q.weight"] == GGMLQuantizationType.Q4_0  # the adapter's layers, merged and quantized
    assert types["blk.0.ffn_down.weight"] == GGMLQuantizationType.Q4_0
    assert not leftovers(tiny_smol)


def test_unknown_architecture_is_one_sentence(converter, tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"]}))
    found = llamacpp.locate()
    with pytest.raises(llamacpp.ConverterError, match="cannot convert the NoSuchModelForCausalLM architecture"):
        llamacpp.run(found, llamacpp.HF_CONVERTER, [str(tmp_path / "odd"), "--outfile", str(tmp_path / "o.gguf")],
                     tmp_path / "log.txt")


def test_cached_release_is_used_without_fetching(converter_dir, monkeypatch):
    monkeypatch.setenv(llamacpp.CACHE_ENV, str(converter_dir.parent.parent))
    said = []
    found = llamacpp.locate(echo=said.append)
    assert found.root == converter_dir and not said and llamacpp.LLAMA_CPP_PYTHON_VERSION in found.origin


@pytest.mark.real_model
@pytest.mark.slow
def test_real_smollm2_gguf_answers_like_start_sh(converter, tmp_path, cli):
    """SmolLM2-135M-Instruct + an adapter: the f32 GGUF continues exactly as base + adapter; q8_0 is ~half f16."""
    from real_model import smollm2_model_dir

    root = install_local(smollm2_model_dir(), tmp_path / "models", "smollm2")
    add_adapter(root, targets=["q_proj", "k_proj", "v_proj", "o_proj"], rank=8)
    sizes = {}
    for outtype in ("f32", "f16", "q8_0"):
        result = cli("export", str(root), "--format", "gguf", "--outtype", outtype, "--json")
        assert result.exit_code == 0, result.output
        sizes[outtype] = json.loads(result.stdout)["bytes"]
    assert_gguf_answers_like_start_sh(root, root / "exports" / "smollm2-tuned-f32.gguf", new_tokens=20,
                                      check_tokenizer=True)
    assert sizes["f16"] < 0.55 * sizes["f32"] and sizes["q8_0"] < 0.6 * sizes["f16"]
    if importlib.util.find_spec("llama_cpp"):  # and llama.cpp itself writes the same answer
        from llama_cpp import Llama
        from transformers import AutoTokenizer

        ids = _prompt(AutoTokenizer.from_pretrained(str(root / "model")))[0].tolist()
        llm = Llama(model_path=str(root / "exports" / "smollm2-tuned-f32.gguf"), n_ctx=512, verbose=False)
        answer = []
        for token in itertools.islice(llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0), 20):
            answer.append(token)
            if token == llm.token_eos():
                break
        assert answer == _greedy_transformers(root, ids, 20, stop_at_eos=True)


def _greedy_transformers(model_root: Path, ids: list[int], new_tokens: int, stop_at_eos: bool = False) -> list[int]:
    """Greedy continuation of base + adapter (PEFT, float32): `new_tokens` of them, or up to eos."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_root / "model"), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(model_root / "lora")).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                             min_new_tokens=None if stop_at_eos else new_tokens)
    return out[0, len(ids):].tolist()


def _logits_transformers(model_root: Path, ids):
    """Last-position logits of base + adapter (PEFT, float32), as start.sh computes them."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_root / "model"), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(model_root / "lora")).eval()
    with torch.no_grad():
        return model(ids).logits[0, -1].numpy()


def _logits_llama_cpp(model: Path, prompt: list[int], lora: Path | None = None):
    """Last-position logits computed by llama.cpp (llama-cpp-python) from the GGUF files."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), lora_path=str(lora) if lora else None, n_ctx=256, n_threads=2,
                verbose=False, logits_all=True)
    llm.eval(prompt)
    return llm.scores[len(prompt) - 1].copy()


@pytest.mark.real_model
def test_llama_cpp_computes_what_start_sh_computes(tiny_smol, converter):
    """Where llama-cpp-python is installed: llama.cpp running the merged GGUF, and the base GGUF with the LoRA
    GGUF, gives the logits base + adapter gives in transformers (a random tiny model's greedy text is just
    repeated newlines, so logits are the sharper test)."""
    pytest.importorskip("llama_cpp")
    import numpy as np
    from transformers import AutoTokenizer

    from export.pipeline import export_model

    quiet = {"echo": lambda _m: None}
    merged = export_model(tiny_smol, "gguf", outtype="f32", **quiet).path
    base = export_model(tiny_smol, "gguf", outtype="f32", no_lora=True, **quiet).path
    lora = export_model(tiny_smol, "lora-gguf", outtype="f32", **quiet).path
    ids = _prompt(AutoTokenizer.from_pretrained(str(tiny_smol / "model")))
    expected = _logits_transformers(tiny_smol, ids)
    prompt = ids[0].tolist()
    for got in (_logits_llama_cpp(merged, prompt), _logits_llama_cpp(base, prompt, lora=lora)):
        assert np.abs(got - expected).max() < 1e-3
        assert int(got.argmax()) == int(expected.argmax())
    assert np.abs(_logits_llama_cpp(base, prompt) - expected).max() > 1e-2  # the adapter matters: the checks bite
