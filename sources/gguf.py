"""GGUF files as model sources: a local .gguf, `ollama:NAME[:TAG]`, a packaged built-in, or one file
of a Hub repository (`--gguf-file`). Each resolves to a GGUF on disk, which `gguf_import` converts."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llamacpp.gguf_reader import DEQUANTIZED_NOTE, GGUFInfo, check_supported, convert_gguf, read_gguf_info
from sources.base import ModelMetadata, RepoFile, SourceError, local_metadata

HUB_DOWNLOAD_SUBDIR = ".gguf-download"


@dataclass
class GGUFSource:
    """A GGUF-backed model source, resolved; `path` is None for a Hub file not downloaded yet."""

    source: str
    kind: str  # "builtin", "gguf", "ollama" or "hub"
    path: Path | None
    revision: str | None = None
    provenance: dict = field(default_factory=dict)  # recorded in model_info.json
    hub_file: RepoFile | None = None


def is_gguf_path(model: str) -> bool:
    """Whether a MODEL argument names a GGUF file (existing or not) rather than a directory or Hub id."""
    return model.lower().endswith(".gguf") or os.path.isfile(os.path.expanduser(model))


def resolve(model: str, kind: str, gguf_file: str | None = None, revision: str | None = None,
            echo: Callable[[str], None] = print) -> GGUFSource:
    """The GGUF behind `model`; downloads nothing into the models directory (a packaged built-in may
    be fetched into the cache)."""
    if kind == "builtin":
        return _packaged(model, echo)
    if kind == "ollama":
        from sources.ollama import resolve as resolve_ollama

        found = resolve_ollama(model.split(":", 1)[1])
        provenance = {"origin": f"Ollama store ({found.reference})", "ollama_digest": found.digest}
        if found.license:
            provenance["license"] = found.license
        return GGUFSource(model, "ollama", found.blob, found.digest, provenance)
    if kind == "hub":
        return _hub(model, gguf_file, revision)
    path = Path(model).expanduser().resolve()
    return GGUFSource(model, "gguf", path, None, {"origin": f"GGUF file {path}"})


def _packaged(model: str, echo: Callable[[str], None]) -> GGUFSource:
    from sources.builtin import PACKAGED
    from sources.packaged import locate

    entry = PACKAGED[model.split(":", 1)[1]]
    found = locate(entry.file, echo=echo)
    provenance = {
        "origin": f"PyPI package {entry.file.package} {found.version} ({found.origin}), file {entry.file.member}",
        "upstream": entry.upstream,
        "license": entry.license,
    }
    return GGUFSource(model, "builtin", found.path, f"{entry.file.package}-{found.version}", provenance)


def _hub(repo_id: str, gguf_file: str | None, revision: str | None) -> GGUFSource:
    from huggingface_hub import HfApi

    from sources.hub_errors import hub_errors, hub_kwargs

    api = HfApi(endpoint=hub_kwargs()["endpoint"], token=os.environ.get("HF_TOKEN") or None)
    with hub_errors(repo_id, revision):
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
    files = {s.rfilename: RepoFile(s.rfilename, s.size or 0, s.lfs.sha256 if s.lfs else None)
             for s in info.siblings or []}
    if gguf_file not in files:
        available = sorted(name for name in files if name.lower().endswith(".gguf"))
        choice = f"it has: {', '.join(available)}" if available else "it has no GGUF files"
        raise SourceError(f"{repo_id} has no file {gguf_file} ({choice}).")
    provenance = {"origin": f"Hub repository {repo_id}, file {gguf_file}"}
    return GGUFSource(repo_id, "hub", None, info.sha, provenance, hub_file=files[gguf_file])


def metadata(source: GGUFSource, info: GGUFInfo) -> ModelMetadata:
    """What `check` and `install` know before converting: the GGUF header and the config it implies."""
    from llamacpp.gguf_reader import transformers_config

    config = transformers_config(info)
    meta = ModelMetadata(
        source=source.source, kind=source.kind, config=config,
        files=[RepoFile(info.path.name, info.file_bytes)], revision=source.revision,
    )
    meta.gguf = info
    return meta


def fetch_hub_file(source: GGUFSource, root: Path) -> Path:
    """Download (or resume) the Hub GGUF into <root>/.gguf-download through the Hub download code, verified."""
    from sources.fetch import fetch_from_hub, verify
    from sources.selection import Selection

    target = root / HUB_DOWNLOAD_SUBDIR
    target.mkdir(parents=True, exist_ok=True)
    selection = Selection(files=[source.hub_file], pickle_only=False)
    meta = ModelMetadata(source=source.source, kind="hub", config={}, files=[source.hub_file], revision=source.revision)
    fetch_from_hub(meta, selection, target)
    verify(selection, target)
    return target / source.hub_file.path


def convert_into(info: GGUFInfo, weights: Path, echo: Callable[[str], None]) -> None:
    """Convert the GGUF next to `weights`, then move the result into place (never a half-written model/)."""
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=weights.parent))
    try:
        convert_gguf(info.path, staging, echo=echo)
        if weights.exists():
            shutil.rmtree(weights)
        os.replace(staging, weights)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def converted_metadata(source: GGUFSource, info: GGUFInfo, weights: Path) -> ModelMetadata:
    """Metadata of the converted directory, still carrying the GGUF header."""
    meta = local_metadata(weights, source=source.source, kind=source.kind)
    meta.local_path = None
    meta.revision = source.revision
    meta.gguf = info
    return meta


def gguf_record(source: GGUFSource, info: GGUFInfo) -> dict:
    """model_info.json's account of where the weights came from and what the conversion means."""
    record = {
        "gguf": {
            "file": info.path.name,
            "architecture": info.architecture,
            "quantization": info.quantization,
            "file_bytes": info.file_bytes,
            "parameters": info.parameters,
            "converted_to": info.dtype,
            "note": DEQUANTIZED_NOTE,
        },
        **source.provenance,
    }
    if "license" not in record and info.license:
        record["license"] = info.license
    return record


def read_checked(path: Path) -> GGUFInfo:
    """The GGUF's header, refusing architectures transformers cannot convert."""
    info = read_gguf_info(path)
    check_supported(info)
    return info

