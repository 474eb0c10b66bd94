"""A model directory on disk as a source: its metadata, and hard-linking or copying its files into model/."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from sources.base import TOKENIZER_CONFIG, ModelMetadata, RepoFile, Source, SourceError
from sources.fetch import fetch_from_directory
from sources.selection import select_files


class LocalSource(Source):
    """A local Hugging Face model directory (hard-linked when on the same filesystem, else copied)."""

    name = "local"

    def claims(self, model: str) -> bool:
        return os.path.isdir(os.path.expanduser(model))

    def metadata(self, model: str, revision: str | None = None) -> ModelMetadata:
        return local_metadata(Path(model).expanduser().resolve(), source=model)

    def fetch(self, model, meta, selection, weights, force, echo: Callable[[str], None]):
        _validate_loadable(meta)
        weights.mkdir(parents=True, exist_ok=True)
        return meta, fetch_from_directory(meta.local_path, selection, weights, force)


SOURCE = LocalSource()


def local_metadata(path: Path, source: str | None = None, kind: str = "local") -> ModelMetadata:
    """Metadata of a model directory on disk (config, tokenizer config, files, safetensors headers)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise SourceError(f"{path} has no config.json: it is not a Hugging Face model directory.")
    config = read_json(config_file)
    tokenizer_config = read_json(path / TOKENIZER_CONFIG) if (path / TOKENIZER_CONFIG).is_file() else None
    files = [
        RepoFile(str(p.relative_to(path)), p.stat().st_size)
        for p in sorted(path.rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(path).parts
    ]
    meta = ModelMetadata(
        source=source or str(path), kind=kind, config=config, files=files, tokenizer_config=tokenizer_config,
        local_path=path,
    )
    _count_local_safetensors(meta, path)
    return meta


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"Cannot read {path}: {exc}") from exc


def _count_local_safetensors(meta: ModelMetadata, path: Path) -> None:
    from safetensors import safe_open

    weights = [f for f in select_files(meta.files).files if f.path.endswith(".safetensors")]
    counts: dict[str, int] = {}
    for weight in weights:
        try:
            with safe_open(str(path / weight.path), framework="numpy") as handle:
                for name in handle.keys():
                    tensor = handle.get_slice(name)
                    numel = 1
                    for dim in tensor.get_shape():
                        numel *= dim
                    dtype = tensor.get_dtype()
                    counts[dtype] = counts.get(dtype, 0) + numel
        except Exception as exc:  # a corrupt header must not hide the rest of the report
            raise SourceError(f"Cannot read safetensors header of {path / weight.path}: {exc}") from exc
    if counts:
        meta.safetensors_dtypes = counts
        meta.safetensors_parameters = sum(counts.values())




def _validate_loadable(meta: ModelMetadata) -> None:
    """A local source must parse as a transformers config and have a tokenizer."""
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(str(meta.local_path), trust_remote_code=False)
    except Exception as exc:
        if "trust_remote_code" not in str(exc):
            raise SourceError(f"{meta.local_path} is not a loadable model: {str(exc).splitlines()[0]}") from exc
    names = {f.path for f in meta.files}
    if not names & {"tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json"}:
        raise SourceError(f"{meta.local_path} has no tokenizer files (tokenizer.json, tokenizer.model or vocab.json).")
