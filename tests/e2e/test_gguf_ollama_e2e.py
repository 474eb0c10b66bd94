"""`install ollama:NAME[:TAG]` from a local Ollama store."""

import json

from ollama_store import add_model


def test_install_from_ollama_store(cli, tmp_path, monkeypatch, tiny_gguf_bytes):
    store = tmp_path / "ollama"
    digest = add_model(store, tiny_gguf_bytes, "registry.ollama.ai/library/tiny/1b", license_text="Apache License\n")
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    missing = cli("install", "ollama:tiny")  # the tag defaults to latest, which was not pulled
    assert missing.exit_code == 1 and "ollama pull tiny" in missing.output
    assert len(missing.output.strip().splitlines()) == 1 and not (tmp_path / "models").exists()
    report = json.loads(cli("check", "ollama:tiny:1b", "--json").output)
    assert report["source_kind"] == "ollama" and report["gguf"]["quantization"] == "Q8_0"
    result = cli("install", "ollama:tiny:1b")
    assert result.exit_code == 0, result.output
    model = tmp_path / "models" / "ollama_tiny_1b"
    info = json.loads((model / "model_info.json").read_text())
    assert info["source"] == "ollama:tiny:1b" and info["source_kind"] == "ollama"
    assert info["revision"] == digest and info["ollama_digest"] == digest and info["license"] == "Apache License"
    assert "registry.ollama.ai/library/tiny:1b" in info["origin"]
    assert json.loads(cli("list", "--json").output)[0]["status"] == "ready"
    assert (model / "train.sh").exists() and (model / "start.sh").exists()
