"""Choosing which files of a repository `install` fetches: safetensors over pickles, no duplicates."""

from __future__ import annotations

from dataclasses import dataclass

from core.model_dir import is_weight_file
from sources.base import RepoFile

# Small top-level files a model needs besides its weights (config, tokenizer, chat template, remote code).
SUPPORT_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".py", ".tiktoken", ".tokenizer")
PICKLE_PREFIXES = ("pytorch_model", "model")
SKIPPED_WEIGHT_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth")


@dataclass
class Selection:
    """Files to fetch, and whether the weights are pickles (unsafe to load from strangers)."""

    files: list[RepoFile]
    pickle_only: bool

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _top_level(files: list[RepoFile]) -> list[RepoFile]:
    return [f for f in files if "/" not in f.path]


def _weight_files(top: list[RepoFile]) -> tuple[list[RepoFile], bool]:
    safetensors = [f for f in top if f.path.endswith(".safetensors")]
    if safetensors:
        # Mistral-style repos also ship consolidated.safetensors: a second copy of the same weights.
        standard = [f for f in safetensors if f.path.startswith("model")]
        return (standard or safetensors), False
    pickles = [
        f for f in top
        if f.path.endswith((".bin", ".pt", ".pth")) and f.path.startswith(PICKLE_PREFIXES)
        and f.path not in SKIPPED_WEIGHT_FILES
    ]
    return pickles, bool(pickles)


def select_files(files: list[RepoFile]) -> Selection:
    """The files to download: top-level weights (safetensors when present) plus config/tokenizer files."""
    top = _top_level(files)
    weights, pickle_only = _weight_files(top)
    support = [
        f for f in top
        if not is_weight_file(f.path) and f.path.endswith(SUPPORT_SUFFIXES)
        and not (not pickle_only and f.path.endswith(".bin.index.json"))
        and not (pickle_only and f.path.endswith(".safetensors.index.json"))
    ]
    chosen = sorted(support + weights, key=lambda f: f.path)
    return Selection(files=chosen, pickle_only=pickle_only)
