"""Reading a model's metadata, never its weights, from the Hub, a local directory or a built-in."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from sources.hub_errors import hub_errors, hub_kwargs

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


def source_kind(model: str) -> str:
    """'builtin', 'ollama', 'gguf', 'local' or 'hub' for a MODEL argument, validated before anything is created;
    SourceError when it is none of them."""
    if model.startswith("builtin:"):
        from sources.builtin import check_name

        check_name(model.split(":", 1)[1])
        return "builtin"
    if model.startswith("ollama:"):
        from sources.ollama import parse_name

        parse_name(model.split(":", 1)[1])
        return "ollama"
    expanded = os.path.expanduser(model)
    if model.lower().endswith(".gguf") or os.path.isfile(expanded):
        if not os.path.isfile(expanded):
            raise SourceError(f"No such GGUF file: {_shown(model)}")
        return "gguf"
    if os.path.isdir(expanded):
        return "local"
    parts = model.split("/")
    if len(parts) == 2 and all(parts) and not model.startswith((".", "~")):
        _check_hub_id(model)
        return "hub"
    if model.startswith((".", "/", "~")) or os.sep in model:
        raise SourceError(f"No such model directory or GGUF file: {_shown(model)}")
    raise SourceError(
        f"'{_shown(model)}' is not a Hub id (org/name), a local model directory, a .gguf file, ollama:NAME or builtin:NAME."
    )


def _shown(text: str, limit: int = 80) -> str:
    """`text` cut to a readable length for a one-sentence error."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_hub_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise SourceError(
            f"'{_shown(repo_id)}' is not a valid Hub id: org/name with letters, digits, '-', '_' or '.', "
            "at most 96 characters."
        ) from exc


def read_metadata(model: str, revision: str | None = None) -> ModelMetadata:
    """Metadata for any kind of source (a GGUF's from its header; never its tensors)."""
    kind = source_kind(model)
    if kind == "hub":
        return hub_metadata(model, revision)
    if kind == "local":
        return local_metadata(Path(model).expanduser().resolve(), source=model)
    from sources.builtin import PACKAGED

    if kind in ("gguf", "ollama") or model.split(":", 1)[1] in PACKAGED:
        from sources import gguf as gguf_source

        source = gguf_source.resolve(model, kind)
        return gguf_source.metadata(source, gguf_source.read_checked(source.path))
    from sources.builtin import builtin_metadata

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

    from sources.selection import select_files

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
            ggufs = sorted(name for name in names if name.lower().endswith(".gguf"))
            if ggufs:
                raise SourceError(f"{repo_id} holds GGUF files; pick one with --gguf-file ({', '.join(ggufs[:8])}"
                                  f"{', ...' if len(ggufs) > 8 else ''}).")
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
