"""Reading a model's metadata, never its weights, from the Hub, a local directory or a built-in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError

TOKENIZER_CONFIG = "tokenizer_config.json"


class SourceError(UserError, ValueError):
    """The model source cannot be used; the message says why in one sentence."""


@dataclass
class RepoFile:
    """One file of a model source."""

    path: str
    size: int
    sha256: str | None = None


@dataclass
class ModelMetadata:
    """What `check` and `install` know about a model before fetching its weights."""

    source: str
    kind: str  # "hub", "local", "builtin", "gguf" or "ollama"
    config: dict
    files: list[RepoFile]
    tokenizer_config: dict | None = None
    revision: str | None = None
    local_path: Path | None = None
    safetensors_parameters: int | None = None
    safetensors_dtypes: dict[str, int] = field(default_factory=dict)
    gated: bool = False
    gguf: Any = None  # GGUFInfo when the weights come from a GGUF file


def shown(text: str, limit: int = 80) -> str:
    """`text` cut to a readable length for a one-sentence error."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"




class Source:
    """One kind of model source (a MODEL argument of `check` and `install`): a Hub id, a local directory, a
    .gguf file, an Ollama model, a built-in. Subclasses live one per module and are listed in
    sources/registry.py; `install` and `check` go through these methods only.

    A source either brings the model's own files into model/ (`fetch`), or hands `install` a GGUF to convert
    (`resolve_gguf`, when `is_gguf` says so)."""

    name: str = ""  # recorded as model_info.json's source_kind
    takes_gguf_file: bool = False  # whether --gguf-file may pick one GGUF of it

    def claims(self, model: str) -> bool:
        """Whether MODEL names a source of this kind (sources are asked in registry order)."""
        raise NotImplementedError

    def check(self, model: str) -> None:
        """Refuse a malformed MODEL of this kind in one sentence (SourceError), before anything is created."""

    def metadata(self, model: str, revision: str | None = None) -> ModelMetadata:
        """What `check` and `install` know before fetching weights (a GGUF's from its header)."""
        raise NotImplementedError

    def is_gguf(self, model: str, gguf_file: str | None = None) -> bool:
        """Whether `install` converts a GGUF (resolve_gguf) rather than fetching files (fetch)."""
        return False

    def resolve_gguf(self, model: str, gguf_file: str | None, revision: str | None, echo: Callable[[str], None]):
        """The GGUF behind MODEL (a sources.gguf.GGUFSource)."""
        raise NotImplementedError

    def metadata_before_fetch(self, model: str, revision: str | None) -> ModelMetadata | None:
        """Metadata to check before anything is created; None for a model that is built here, not fetched."""
        return self.metadata(model, revision)

    def fetch(self, model: str, meta: ModelMetadata | None, selection, weights: Path, force: bool,
              echo: Callable[[str], None]) -> tuple[ModelMetadata, str]:
        """Bring the model's files into `weights` (the install directory's model/); returns the metadata of what
        is there now and how it got there ("downloaded", "hard-linked", "copied", "built", ...)."""
        raise NotImplementedError
