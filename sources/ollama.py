"""Finding a model's GGUF blob in the local Ollama store, through its manifest (read-only)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.quoting import brief, one_line
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
MAX_MANIFEST_BYTES = 1024 * 1024  # real manifests are a few hundred bytes
LICENSE_PEEK_BYTES = 64 * 1024  # the license's first line is all we keep
HASH_CHUNK_BYTES = 8 * 1024 * 1024


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


def resolve(name: str, store: Path | None = None, verify: bool = False) -> OllamaModel:
    """The GGUF blob of Ollama model `name` (NAME[:TAG]); OllamaError when it is not in the store, when its
    manifest is damaged, or (`verify`) when the blob's sha256 is not the digest the manifest names."""
    host, namespace, model, tag = parse_name(name)
    root = store or store_root()
    reference = f"{host}/{namespace}/{model}:{tag}"
    manifest_path = root / "manifests" / host / namespace / model / tag
    if not manifest_path.is_file():
        raise OllamaError(f"Ollama model {name} is not in the Ollama store {root}; {_pull_hint(name)}.")
    layers = _layers(manifest_path, name)
    model_layer = next((layer for layer in layers if layer.get("mediaType") == MODEL_LAYER), None)
    if model_layer is None:
        raise OllamaError(f"Ollama model {name} has no GGUF model layer in {manifest_path}.")
    blob, digest = _blob(root, model_layer.get("digest", ""), name)
    size = blob.stat().st_size
    if model_layer.get("size") not in (None, size):
        raise OllamaError(f"The blob of Ollama model {name} has {size:,} bytes, its manifest says "
                          f"{model_layer['size']:,}; {_pull_hint(name)} again.")
    if verify:
        _check_digest(blob, digest, name)
    license_layer = next((layer for layer in layers if layer.get("mediaType") == LICENSE_LAYER), None)
    return OllamaModel(name, reference, blob, digest, size, _license(root, license_layer))


def _layers(manifest_path: Path, name: str) -> list[dict]:
    """The manifest's layers, each a mapping whose digest is text and size a whole number (or absent)."""
    def damaged(why: str) -> OllamaError:
        return OllamaError(f"Cannot read the Ollama manifest {manifest_path}: {why}; {_pull_hint(name)} again.")

    try:
        with manifest_path.open("rb") as handle:
            data = handle.read(MAX_MANIFEST_BYTES + 1)
        manifest = json.loads(data) if len(data) <= MAX_MANIFEST_BYTES else None
    except (OSError, ValueError, RecursionError) as exc:
        raise damaged(brief(str(exc))) from None
    if manifest is None:
        raise damaged(f"it is larger than {MAX_MANIFEST_BYTES // 1024} KiB")
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list) or not all(isinstance(layer, dict) for layer in layers):
        raise damaged("its 'layers' is not a list of layers")
    for layer in layers:
        size = layer.get("size")
        if not isinstance(layer.get("digest", ""), str) or (size is not None and (type(size) is not int or size < 0)):
            raise damaged(f"a layer has the digest {brief(layer.get('digest'))} and size {brief(size)}")
    return layers


def _inside(path: Path, folder: Path) -> bool:
    real, real_folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, real_folder]) == real_folder


def _blob(root: Path, digest: str, name: str) -> tuple[Path, str]:
    match = _DIGEST.fullmatch(digest)
    if not match:
        raise OllamaError(f"The manifest of Ollama model {name} names an invalid blob digest {brief(digest)}.")
    # Ollama writes blobs as sha256-<hex>; releases before 0.1.34 wrote sha256:<hex>.
    for candidate in (root / "blobs" / f"sha256-{match[1]}", root / "blobs" / f"sha256:{match[1]}"):
        if candidate.is_file():
            if not _inside(candidate, root / "blobs"):
                raise OllamaError(f"The blob {candidate} of Ollama model {name} is a link to "
                                  f"{os.path.realpath(candidate)}, outside the Ollama store; {_pull_hint(name)} again.")
            return candidate, f"sha256:{match[1]}"
    raise OllamaError(f"The model blob of Ollama model {name} is missing from {root / 'blobs'}; "
                      f"{_pull_hint(name)} again.")


def _check_digest(blob: Path, digest: str, name: str) -> None:
    """OllamaError when the blob's sha256 is not its digest (a damaged or replaced blob)."""
    hasher = hashlib.sha256()
    with blob.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            hasher.update(chunk)
    if f"sha256:{hasher.hexdigest()}" != digest:
        raise OllamaError(f"The blob {blob} of Ollama model {name} does not match its digest {digest} (it is damaged "
                          f"or was replaced); {_pull_hint(name)} again.")


def _license(root: Path, layer: dict | None) -> str | None:
    """The first line of the model's license layer (e.g. 'Apache License'), when it has one; reads at most
    LICENSE_PEEK_BYTES, so a huge or sparse license blob costs nothing."""
    if not layer:
        return None
    match = _DIGEST.fullmatch(layer.get("digest", ""))
    path = root / "blobs" / f"sha256-{match[1]}" if match else None
    if not path or not path.is_file() or not _inside(path, root / "blobs"):
        return None
    with path.open("rb") as handle:
        head = handle.read(LICENSE_PEEK_BYTES).decode("utf-8", errors="replace").split("\0", 1)[0]
    line = next((line.strip() for line in head.splitlines() if line.strip()), None)
    return one_line(line[:200]) if line else None


class OllamaSource(Source):
    """`ollama:NAME[:TAG]`: a model already pulled into the local Ollama store (read-only)."""

    name = "ollama"

    def claims(self, model: str) -> bool:
        return model.startswith("ollama:")

    def check(self, model: str) -> None:
        parse_name(model.split(":", 1)[1])

    def metadata(self, model: str, revision: str | None = None) -> ModelMetadata:
        # `check` reads the header only; `install` (resolve_gguf) also hashes the whole blob.
        return gguf_metadata(self._source(resolve(model.split(":", 1)[1])))

    def is_gguf(self, model: str, gguf_file: str | None = None) -> bool:
        return True

    def resolve_gguf(self, model, gguf_file, revision, echo) -> GGUFSource:
        return self._source(resolve(model.split(":", 1)[1], verify=True))

    def _source(self, found: OllamaModel) -> GGUFSource:
        provenance = {"origin": f"Ollama store ({found.reference})", "ollama_digest": found.digest}
        if found.license:
            provenance["license"] = found.license
        return GGUFSource(f"ollama:{found.name}", "ollama", found.blob, found.digest, provenance)


SOURCE = OllamaSource()
