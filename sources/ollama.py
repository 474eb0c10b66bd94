"""Finding a model's GGUF blob in the local Ollama store, through its manifest (read-only)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sources.base import ModelMetadata, Source, SourceError
from sources.gguf import GGUFSource, gguf_metadata

OLLAMA_MODELS_ENV = "OLLAMA_MODELS"
DEFAULT_STORE = Path("~/.ollama/models")
DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MODEL_LAYER = "application/vnd.ollama.image.model"
LICENSE_LAYER = "application/vnd.ollama.image.license"
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")


class OllamaError(SourceError):
    """An Ollama model that cannot be found or read; the message says what to do."""


@dataclass(frozen=True)
class OllamaModel:
    """One model of the Ollama store, resolved to its GGUF blob."""

    name: str  # as the user wrote it after "ollama:"
    reference: str  # host/namespace/model:tag
    blob: Path
    digest: str
    size: int
    license: str | None = None


def store_root() -> Path:
    """$OLLAMA_MODELS, else ~/.ollama/models."""
    return Path(os.environ.get(OLLAMA_MODELS_ENV) or DEFAULT_STORE).expanduser()


def parse_name(name: str) -> tuple[str, str, str, str]:
    """(host, namespace, model, tag) of NAME[:TAG], NAMESPACE/NAME[:TAG] or HOST/NAMESPACE/NAME[:TAG]."""
    path, colon, tag = name.partition(":")
    tag = tag if colon else DEFAULT_TAG
    parts = path.split("/")
    if not 1 <= len(parts) <= 3 or not all(_PART.fullmatch(p) for p in [*parts, tag]):
        raise OllamaError(f"'ollama:{name}' is not an Ollama model name (NAME[:TAG], e.g. ollama:llama3.2:1b).")
    host, namespace = DEFAULT_REGISTRY, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace = parts[0], parts[1]
    elif len(parts) == 2:
        namespace = parts[0]
    return host, namespace, parts[-1], tag


def _pull_hint(name: str) -> str:
    return f"run `ollama pull {name}` first"


def resolve(name: str, store: Path | None = None) -> OllamaModel:
    """The GGUF blob of Ollama model `name` (NAME[:TAG]); OllamaError when it is not in the store."""
    host, namespace, model, tag = parse_name(name)
    root = store or store_root()
    reference = f"{host}/{namespace}/{model}:{tag}"
    manifest_path = root / "manifests" / host / namespace / model / tag
    if not manifest_path.is_file():
        raise OllamaError(f"Ollama model {name} is not in the Ollama store {root}; {_pull_hint(name)}.")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        layers = manifest["layers"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OllamaError(f"Cannot read the Ollama manifest {manifest_path}: {exc}; {_pull_hint(name)} again.") from exc
    model_layer = next((layer for layer in layers if layer.get("mediaType") == MODEL_LAYER), None)
    if model_layer is None:
        raise OllamaError(f"Ollama model {name} has no GGUF model layer in {manifest_path}.")
    blob, digest = _blob(root, model_layer.get("digest", ""), name)
    size = blob.stat().st_size
    if model_layer.get("size") not in (None, size):
        raise OllamaError(f"The blob of Ollama model {name} has {size:,} bytes, its manifest says "
                          f"{model_layer['size']:,}; {_pull_hint(name)} again.")
    license_layer = next((layer for layer in layers if layer.get("mediaType") == LICENSE_LAYER), None)
    return OllamaModel(name, reference, blob, digest, size, _license(root, license_layer))


def _blob(root: Path, digest: str, name: str) -> tuple[Path, str]:
    match = _DIGEST.fullmatch(digest)
    if not match:
        raise OllamaError(f"The manifest of Ollama model {name} names an invalid blob digest {digest!r}.")
    # Ollama writes blobs as sha256-<hex>; releases before 0.1.34 wrote sha256:<hex>.
    for candidate in (root / "blobs" / f"sha256-{match[1]}", root / "blobs" / f"sha256:{match[1]}"):
        if candidate.is_file():
            return candidate, f"sha256:{match[1]}"
    raise OllamaError(f"The model blob of Ollama model {name} is missing from {root / 'blobs'}; "
                      f"{_pull_hint(name)} again.")


def _license(root: Path, layer: dict | None) -> str | None:
    """The first line of the model's license layer (e.g. 'Apache License'), when it has one."""
    if not layer:
        return None
    match = _DIGEST.fullmatch(layer.get("digest", ""))
    path = root / "blobs" / f"sha256-{match[1]}" if match else None
    if not path or not path.is_file():
        return None
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip():
                return line.strip()[:200]
    return None


class OllamaSource(Source):
    """`ollama:NAME[:TAG]`: a model already pulled into the local Ollama store (read-only)."""

    name = "ollama"

    def claims(self, model: str) -> bool:
        return model.startswith("ollama:")

    def check(self, model: str) -> None:
        parse_name(model.split(":", 1)[1])

    def metadata(self, model: str, revision: str | None = None) -> ModelMetadata:
        return gguf_metadata(self.resolve_gguf(model, None, revision, print))

    def is_gguf(self, model: str, gguf_file: str | None = None) -> bool:
        return True

    def resolve_gguf(self, model, gguf_file, revision, echo) -> GGUFSource:
        found = resolve(model.split(":", 1)[1])
        provenance = {"origin": f"Ollama store ({found.reference})", "ollama_digest": found.digest}
        if found.license:
            provenance["license"] = found.license
        return GGUFSource(model, "ollama", found.blob, found.digest, provenance)


SOURCE = OllamaSource()
