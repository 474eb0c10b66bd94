"""GGUF files as model sources: a local .gguf, `ollama:NAME[:TAG]`, a packaged built-in, or one file
of a Hub repository (`--gguf-file`). Each resolves to a GGUF on disk, which `gguf_import` converts."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.staging import make_staging, remove_leftovers
from llamacpp.gguf_reader import DEQUANTIZED_NOTE, GGUFInfo, check_supported, convert_gguf, read_gguf_info, transformers_config
from sources.base import ModelMetadata, RepoFile, Source, SourceError, shown
from sources.fetch import fetch_from_hub, verify
from sources.local import local_metadata
from sources.selection import Selection

HUB_DOWNLOAD_SUBDIR = ".gguf-download"
CONVERT_PREFIX = ".convert-"


@dataclass
class GGUFSource:
    """A GGUF-backed model source, resolved; `path` is None for a Hub file not downloaded yet."""

    source: str
    kind: str  # "builtin", "gguf", "ollama" or "hub"
    path: Path | None
    revision: str | None = None
    provenance: dict = field(default_factory=dict)  # recorded in model_info.json
    hub_file: RepoFile | None = None


class GGUFFileSource(Source):
    """A local .gguf file."""

    name = "gguf"

    def claims(self, model: str) -> bool:
        """A GGUF file (existing or not) rather than a directory or Hub id."""
        return model.lower().endswith(".gguf") or os.path.isfile(os.path.expanduser(model))

    def check(self, model: str) -> None:
        if not os.path.isfile(os.path.expanduser(model)):
            raise SourceError(f"No such GGUF file: {shown(model)}")

    def metadata(self, model: str, revision: str | None = None) -> ModelMetadata:
        return gguf_metadata(self.resolve_gguf(model, None, revision, print))

    def is_gguf(self, model: str, gguf_file: str | None = None) -> bool:
        return True

    def resolve_gguf(self, model, gguf_file, revision, echo: Callable[[str], None]) -> GGUFSource:
        path = Path(model).expanduser().resolve()
        return GGUFSource(model, "gguf", path, None, {"origin": f"GGUF file {path}"})


SOURCE = GGUFFileSource()


def gguf_metadata(source: GGUFSource) -> ModelMetadata:
    """Metadata of a resolved GGUF on disk, from its checked header."""
    return metadata(source, read_checked(source.path))


def metadata(source: GGUFSource, info: GGUFInfo) -> ModelMetadata:
    """What `check` and `install` know before converting: the GGUF header and the config it implies."""
    config = transformers_config(info)
    meta = ModelMetadata(
        source=source.source, kind=source.kind, config=config,
        files=[RepoFile(info.path.name, info.file_bytes)], revision=source.revision,
    )
    meta.gguf = info
    return meta


def fetch_hub_file(source: GGUFSource, root: Path) -> Path:
    """Download (or resume) the Hub GGUF into <root>/.gguf-download through the Hub download code, verified."""
    target = root / HUB_DOWNLOAD_SUBDIR
    target.mkdir(parents=True, exist_ok=True)
    selection = Selection(files=[source.hub_file], pickle_only=False)
    meta = ModelMetadata(source=source.source, kind="hub", config={}, files=[source.hub_file], revision=source.revision)
    fetch_from_hub(meta, selection, target)
    verify(selection, target)
    return target / source.hub_file.path


def convert_into(info: GGUFInfo, weights: Path, echo: Callable[[str], None]) -> None:
    """Convert the GGUF next to `weights`, then move the result into place (never a half-written model/); the
    staging folders of killed conversions are removed once this one succeeds."""
    staging = make_staging(weights.parent, CONVERT_PREFIX)
    try:
        convert_gguf(info.path, staging, echo=echo)
        if weights.exists():
            shutil.rmtree(weights)
        os.replace(staging, weights)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    remove_leftovers(weights.parent, CONVERT_PREFIX)


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

