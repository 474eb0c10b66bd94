"""`install ollama:NAME[:TAG]`: the GGUF blob found through the manifest of a local Ollama store."""

import hashlib
import json

import pytest
from tiny_models import write_tiny_gguf

from sources.ollama import OllamaError, parse_name, resolve


def _add_model(store, gguf_bytes: bytes, path: str, old_blob_names: bool = False, license_text: str | None = None):
    """Put one model into an Ollama store layout: manifests/<host>/<namespace>/<model>/<tag> + blobs."""
    blobs = store / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    layers = []
    for media_type, data in (("application/vnd.ollama.image.model", gguf_bytes),
                             ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
                             ("application/vnd.ollama.image.license", (license_text or "").encode())):
        if not data:
            continue
        digest = hashlib.sha256(data).hexdigest()
        (blobs / (f"sha256:{digest}" if old_blob_names else f"sha256-{digest}")).write_bytes(data)
        layers.append({"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)})
    manifest = store / "manifests" / path
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "config": {}, "layers": layers}))
    return layers[0]["digest"]


@pytest.fixture(scope="session")
def tiny_gguf_bytes(tiny_llama_dir, tmp_path_factory) -> bytes:
    return write_tiny_gguf(tiny_llama_dir, tmp_path_factory.mktemp("ollama") / "tiny.gguf",
                           quantization="Q8_0").read_bytes()


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
    digest = _add_model(store, tiny_gguf_bytes, "registry.ollama.ai/library/tiny/latest", license_text="MIT License\n")
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    found = resolve("tiny")
    assert found.digest == digest and found.blob.read_bytes() == tiny_gguf_bytes and found.license == "MIT License"
    _add_model(tmp_path / "old", tiny_gguf_bytes, "hf.co/acme/tiny/Q8_0", old_blob_names=True)
    assert resolve("hf.co/acme/tiny:Q8_0", store=tmp_path / "old").blob.name.startswith("sha256:")
    monkeypatch.delenv("OLLAMA_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _add_model(tmp_path / "home" / ".ollama" / "models", tiny_gguf_bytes, "registry.ollama.ai/library/tiny/latest")
    assert resolve("tiny").blob.parent == tmp_path / "home" / ".ollama" / "models" / "blobs"


def test_missing_model_says_pull_first(tmp_path, monkeypatch, tiny_gguf_bytes):
    store = tmp_path / "ollama"
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    with pytest.raises(OllamaError, match=r"not in the Ollama store .*; run `ollama pull qwen2.5:0.5b` first"):
        resolve("qwen2.5:0.5b")
    digest = _add_model(store, tiny_gguf_bytes, "registry.ollama.ai/library/tiny/latest")
    (store / "blobs" / f"sha256-{digest.split(':')[1]}").unlink()
    with pytest.raises(OllamaError, match="missing .*ollama pull tiny"):
        resolve("tiny")


@pytest.mark.e2e
def test_install_from_ollama_store(cli, tmp_path, monkeypatch, tiny_gguf_bytes):
    store = tmp_path / "ollama"
    digest = _add_model(store, tiny_gguf_bytes, "registry.ollama.ai/library/tiny/1b", license_text="Apache License\n")
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
