"""Reading a model's metadata, never its weights, from the Hub, a local directory or a built-in."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .hub_errors import hub_errors, hub_kwargs

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
    kind: str  # "hub", "local" or "builtin"
    config: dict
    files: list[RepoFile]
    tokenizer_config: dict | None = None
    revision: str | None = None
    local_path: Path | None = None
    safetensors_parameters: int | None = None
    safetensors_dtypes: dict[str, int] = field(default_factory=dict)
    gated: bool = False


def source_kind(model: str) -> str:
    """'builtin', 'local' or 'hub' for a MODEL argument; SourceError when it is none of them."""
    if model.startswith("builtin:"):
        return "builtin"
    if os.path.isdir(os.path.expanduser(model)):
        return "local"
    parts = model.split("/")
    if len(parts) == 2 and all(parts) and not model.startswith((".", "~")):
        return "hub"
    if model.startswith((".", "/", "~")) or os.sep in model:
        raise SourceError(f"No such model directory: {model}")
    raise SourceError(f"'{model}' is not a Hub id (org/name), a local model directory or builtin:NAME.")


def read_metadata(model: str, revision: str | None = None) -> ModelMetadata:
    """Metadata for any kind of source."""
    kind = source_kind(model)
    if kind == "hub":
        return hub_metadata(model, revision)
    if kind == "local":
        return local_metadata(Path(model).expanduser().resolve(), source=model)
    from .builtin import builtin_metadata

    return builtin_metadata(model.split(":", 1)[1])


def local_metadata(path: Path, source: str | None = None, kind: str = "local") -> ModelMetadata:
    """Metadata of a model directory on disk (config, tokenizer config, files, safetensors headers)."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise SourceError(f"{path} has no config.json: it is not a Hugging Face model directory.")
    config = _read_json(config_file)
    tokenizer_config = _read_json(path / TOKENIZER_CONFIG) if (path / TOKENIZER_CONFIG).is_file() else None
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


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"Cannot read {path}: {exc}") from exc


def _count_local_safetensors(meta: ModelMetadata, path: Path) -> None:
    from safetensors import safe_open

    from .selection import select_files

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


def hub_metadata(repo_id: str, revision: str | None = None) -> ModelMetadata:
    """Metadata from the Hub (or HF_ENDPOINT): file list with sizes, config, tokenizer config, safetensors headers."""
    from huggingface_hub import HfApi, hf_hub_download

    settings = hub_kwargs()
    api = HfApi(endpoint=settings["endpoint"], token=os.environ.get("HF_TOKEN") or None)
    with hub_errors(repo_id, revision):
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        files = [
            RepoFile(s.rfilename, s.size or 0, s.lfs.sha256 if s.lfs else None) for s in info.siblings or []
        ]
        names = {f.path for f in files}
        if "config.json" not in names:
            raise SourceError(f"{repo_id} has no config.json: it is not a transformers model repository.")
        config = _read_json(Path(hf_hub_download(repo_id, "config.json", revision=info.sha, **settings)))
        tokenizer_config = None
        if TOKENIZER_CONFIG in names:
            tokenizer_config = _read_json(Path(hf_hub_download(repo_id, TOKENIZER_CONFIG, revision=info.sha, **settings)))
        meta = ModelMetadata(
            source=repo_id, kind="hub", config=config, files=files, tokenizer_config=tokenizer_config,
            revision=info.sha, gated=bool(getattr(info, "gated", False)),
        )
        if {"model.safetensors", "model.safetensors.index.json"} & names:
            st = api.get_safetensors_metadata(repo_id, revision=info.sha)
            meta.safetensors_dtypes = dict(st.parameter_count)
            meta.safetensors_parameters = sum(st.parameter_count.values())
    return meta
