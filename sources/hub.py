"""The Hugging Face Hub (or HF_ENDPOINT) as a source: metadata from the API, files through huggingface_hub's
download code, or one GGUF file of a repository (--gguf-file)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from sources.base import TOKENIZER_CONFIG, ModelMetadata, RepoFile, Source, SourceError, shown
from sources.fetch import fetch_from_hub
from sources.gguf import GGUFSource
from sources.hub_errors import hub_errors, hub_kwargs
from sources.local import read_json


class HubSource(Source):
    """`org/name` on the Hub."""

    name = "hub"
    takes_gguf_file = True

    def claims(self, model: str) -> bool:
        parts = model.split("/")
        return len(parts) == 2 and all(parts) and not model.startswith((".", "~"))

    def check(self, model: str) -> None:
        check_hub_id(model)

    def metadata(self, model: str, revision: str | None = None) -> ModelMetadata:
        return hub_metadata(model, revision)

    def is_gguf(self, model: str, gguf_file: str | None = None) -> bool:
        return bool(gguf_file)

    def resolve_gguf(self, model, gguf_file, revision, echo: Callable[[str], None]) -> GGUFSource:
        return gguf_in_repository(model, gguf_file, revision)

    def fetch(self, model, meta, selection, weights, force, echo):
        fetch_from_hub(meta, selection, weights, force)
        return meta, "downloaded"


SOURCE = HubSource()


def check_hub_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise SourceError(
            f"'{shown(repo_id)}' is not a valid Hub id: org/name with letters, digits, '-', '_' or '.', "
            "at most 96 characters."
        ) from exc



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
        config = read_json(Path(hf_hub_download(repo_id, "config.json", revision=info.sha, **settings)))
        tokenizer_config = None
        if TOKENIZER_CONFIG in names:
            tokenizer_config = read_json(Path(hf_hub_download(repo_id, TOKENIZER_CONFIG, revision=info.sha, **settings)))
        meta = ModelMetadata(
            source=repo_id, kind="hub", config=config, files=files, tokenizer_config=tokenizer_config,
            revision=info.sha, gated=bool(getattr(info, "gated", False)),
        )
        if {"model.safetensors", "model.safetensors.index.json"} & names:
            st = api.get_safetensors_metadata(repo_id, revision=info.sha)
            meta.safetensors_dtypes = dict(st.parameter_count)
            meta.safetensors_parameters = sum(st.parameter_count.values())
    return meta


def gguf_in_repository(repo_id: str, gguf_file: str | None, revision: str | None) -> GGUFSource:
    from huggingface_hub import HfApi

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
