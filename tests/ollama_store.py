"""A local Ollama store laid out as `ollama pull` leaves it, for the `install ollama:NAME` tests."""

from __future__ import annotations

import hashlib
import json


def add_model(store, gguf_bytes: bytes, path: str, old_blob_names: bool = False, license_text: str | None = None):
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
