"""Putting a model's files into <model dir>/model: Hub download, local link/copy, built-in build."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from core.errors import UserError
from core.model_dir import is_weight_file
from sources.base import ModelMetadata, RepoFile
from sources.hub_errors import hub_errors, hub_kwargs
from sources.selection import Selection

HASH_CHUNK = 8 * 1024 * 1024


class FetchError(UserError, RuntimeError):
    """Files could not be fetched or failed verification."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bytes_still_needed(selection: Selection, target: Path) -> int:
    """Bytes of the selection not yet complete in `target` (partial downloads count as missing)."""
    missing = 0
    for f in selection.files:
        path = target / f.path
        if not (path.is_file() and path.stat().st_size == f.size):
            missing += f.size
    return missing


def fetch_from_hub(meta: ModelMetadata, selection: Selection, target: Path, force: bool = False) -> None:
    """Download the selected files with huggingface_hub; interrupted downloads resume on the next call."""
    from huggingface_hub import snapshot_download

    # A killed process leaves uniquely named partial files that are never reused: drop them.
    for stale in (target / ".cache").rglob("*.incomplete") if (target / ".cache").exists() else ():
        stale.unlink(missing_ok=True)
    with hub_errors(meta.source, meta.revision):
        snapshot_download(
            meta.source,
            revision=meta.revision,
            local_dir=target,
            allow_patterns=[f.path for f in selection.files],
            force_download=force,
            max_workers=4,
            endpoint=hub_kwargs()["endpoint"],
            token=os.environ.get("HF_TOKEN") or None,
        )


def fetch_from_directory(source: Path, selection: Selection, target: Path, force: bool = False) -> str:
    """Hard-link the selected files from `source` (copy across filesystems); returns 'hard-linked' or 'copied'."""
    mode = "hard-linked"
    for f in selection.files:
        src, dst = source / f.path, target / f.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_file() and dst.stat().st_size == f.size and not force:
            continue
        tmp = dst.with_name(f".{dst.name}.partial")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
            mode = "copied"
        os.replace(tmp, dst)
    return mode


STALE_STAGING_SECONDS = 3600  # a build takes seconds: an older staging folder is a killed install's


def remove_stale_staging(parent: Path, prefix: str = ".builtin-") -> None:
    """Staging folders a killed build left behind (an install still running keeps its folder fresh)."""
    import time

    for leftover in parent.glob(prefix + "*") if parent.is_dir() else []:
        try:
            if time.time() - leftover.stat().st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


def verify(selection: Selection, target: Path) -> list[dict]:
    """Check sizes (and sha256 where the source gave one); returns model_info's file records."""
    records = []
    for f in selection.files:
        path = target / f.path
        if not path.is_file():
            raise FetchError(f"{f.path} is missing after the download; run the same command again to resume.")
        size = path.stat().st_size
        if f.size and size != f.size:
            raise FetchError(f"{f.path} has {size} bytes, expected {f.size}; run the same command again to resume.")
        record: dict = {"path": f.path, "size": size}
        if is_weight_file(f.path):
            record["sha256"] = sha256_of(path)
            if f.sha256 and record["sha256"] != f.sha256:
                path.unlink()
                raise FetchError(f"{f.path} failed its sha256 check and was deleted; run the command again.")
        records.append(record)
    return records


def files_on_disk(target: Path) -> list[RepoFile]:
    """Every file under `target` except download bookkeeping."""
    return [
        RepoFile(str(p.relative_to(target)), p.stat().st_size)
        for p in sorted(target.rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(target).parts
    ]
