"""`ollama:NAME[:TAG]`: the GGUF blob found through the manifest of a local Ollama store (installing one is in
tests/e2e/test_gguf_ollama_e2e.py)."""

import pytest
from ollama_store import add_model

from sources.ollama import OllamaError, parse_name, resolve


def test_names():
    assert parse_name("llama3.2") == ("registry.ollama.ai", "library", "llama3.2", "latest")
    assert parse_name("llama3.2:1b") == ("registry.ollama.ai", "library", "llama3.2", "1b")
    assert parse_name("me/tuned:v2") == ("registry.ollama.ai", "me", "tuned", "v2")
    assert parse_name("hf.co/acme/tiny-GGUF:Q8_0") == ("hf.co", "acme", "tiny-GGUF", "Q8_0")
    for bad in ("", "../../etc:passwd", "a/b/c/d", "name:"):
        with pytest.raises(OllamaError, match="not an Ollama model name"):
            parse_name(bad)


def test_store_lookup(tmp_path, monkeypatch, tiny_gguf_bytes):
    store = tmp_path / "ollama"
    digest = add_model(store, tiny_gguf_bytes, "registry.ollama.ai/library/tiny/latest", license_text="MIT License\n")
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    found = resolve("tiny")
    assert found.digest == digest and found.blob.read_bytes() == tiny_gguf_bytes and found.license == "MIT License"
    add_model(tmp_path / "old", tiny_gguf_bytes, "hf.co/acme/tiny/Q8_0", old_blob_names=True)
    assert resolve("hf.co/acme/tiny:Q8_0", store=tmp_path / "old").blob.name.startswith("sha256:")
    monkeypatch.delenv("OLLAMA_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    add_model(tmp_path / "home" / ".ollama" / "models", tiny_gguf_bytes, "registry.ollama.ai/library/tiny/latest")
    assert resolve("tiny").blob.parent == tmp_path / "home" / ".ollama" / "models" / "blobs"


def test_missing_model_says_pull_first(tmp_path, monkeypatch, tiny_gguf_bytes):
    store = tmp_path / "ollama"
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    with pytest.raises(OllamaError, match=r"not in the Ollama store .*; run `ollama pull qwen2.5:0.5b` first"):
        resolve("qwen2.5:0.5b")
    digest = add_model(store, tiny_gguf_bytes, "registry.ollama.ai/library/tiny/latest")
    (store / "blobs" / f"sha256-{digest.split(':')[1]}").unlink()
    with pytest.raises(OllamaError, match="missing .*ollama pull tiny"):
        resolve("tiny")
