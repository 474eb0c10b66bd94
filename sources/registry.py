"""The registry of model sources: which kind a MODEL argument names, and its metadata.

Each kind is one module of this package that defines SOURCE (a sources.base.Source). Adding a kind is that
module plus its name in SOURCE_MODULES; kinds are asked in this order and the first that claims MODEL wins.
"""

from __future__ import annotations

import importlib
import os
from functools import cache

from sources.base import ModelMetadata, Source, SourceError, shown

SOURCE_MODULES = ("builtin", "ollama", "gguf", "local", "hub")


@cache
def all_sources() -> tuple[Source, ...]:
    """Every registered source kind, in the order they are asked."""
    return tuple(importlib.import_module(f"{__package__}.{name}").SOURCE for name in SOURCE_MODULES)


def source_for(model: str) -> Source:
    """The source kind of a MODEL argument, validated before anything is created; SourceError when it is none."""
    for source in all_sources():
        if source.claims(model):
            source.check(model)
            return source
    if model.startswith((".", "/", "~")) or os.sep in model:
        raise SourceError(f"No such model directory or GGUF file: {shown(model)}")
    raise SourceError(
        f"'{shown(model)}' is not a Hub id (org/name), a local model directory, a .gguf file, ollama:NAME or builtin:NAME."
    )


def source_kind(model: str) -> str:
    """'builtin', 'ollama', 'gguf', 'local' or 'hub' for a MODEL argument (see source_for)."""
    return source_for(model).name


def read_metadata(model: str, revision: str | None = None) -> ModelMetadata:
    """Metadata for any kind of source (a GGUF's from its header; never its tensors)."""
    return source_for(model).metadata(model, revision)
