"""Hardening v2 (issue 21, items 7 and 9) for the Ollama store: damaged manifests are one sentence, a blob whose
bytes are not its digest or that links outside the store is refused. (The bounded license read runs under a memory
limit in tests/e2e/test_hostile_bounds.py.)"""

from __future__ import annotations

import json

import pytest
from ollama_store import add_model

from sources.ollama import OllamaError, resolve

MANIFEST = "manifests/registry.ollama.ai/library/tiny/latest"


def _store(tmp_path, gguf_bytes: bytes):
    store = tmp_path / "ollama"
    add_model(store, gguf_bytes, MANIFEST.removeprefix("manifests/"))
    return store


@pytest.mark.parametrize("change", [
    lambda m: m["layers"][0].update(size="12"),
    lambda m: m.update(layers={"mediaType": "application/vnd.ollama.image.model"}),
    lambda m: m["layers"][0].update(digest=5),
    lambda m: m.update(layers=["not a layer"]),
    lambda m: m["layers"][0].update(size=True),
])
def test_hostile_manifests_are_one_sentence(tmp_path, tiny_gguf_bytes, change):
    store = _store(tmp_path, tiny_gguf_bytes)
    manifest = json.loads((store / MANIFEST).read_text())
    change(manifest)
    (store / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(OllamaError, match="Cannot read the Ollama manifest .*; run `ollama pull tiny` first again"):
        resolve("tiny", store=store)


def test_a_blob_that_does_not_match_its_digest_is_refused_when_installing(tmp_path, tiny_gguf_bytes):
    store = _store(tmp_path, tiny_gguf_bytes)
    found = resolve("tiny", store=store)
    damaged = bytearray(tiny_gguf_bytes)
    damaged[-1] ^= 0xFF  # same size, other bytes
    found.blob.write_bytes(bytes(damaged))
    with pytest.raises(OllamaError, match="does not match its digest sha256:"):
        resolve("tiny", store=store, verify=True)


def test_a_wrong_hash_install_records_nothing(cli, tmp_path, monkeypatch, tiny_gguf_bytes):
    store = _store(tmp_path, tiny_gguf_bytes)
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    blob = resolve("tiny", store=store).blob
    blob.write_bytes(tiny_gguf_bytes[:-1] + bytes([tiny_gguf_bytes[-1] ^ 0xFF]))
    result = cli("install", "ollama:tiny")
    assert result.exit_code == 1 and "does not match its digest" in result.output, result.output
    models = tmp_path / "models"
    assert not models.exists() or not any(models.iterdir())


def test_a_blob_linked_outside_the_store_is_refused(tmp_path, tiny_gguf_bytes):
    store = _store(tmp_path, tiny_gguf_bytes)
    blob = resolve("tiny", store=store).blob
    outside = tmp_path / "elsewhere.gguf"
    blob.rename(outside)
    blob.symlink_to(outside)
    with pytest.raises(OllamaError, match="outside the Ollama store"):
        resolve("tiny", store=store)
