"""Staging folders: private work beside a destination, renamed into place when complete.

A staging folder's name carries its process id, so a later run can tell a killed run's leftover (its process
is gone) from a concurrent run's folder (its process is alive) and remove only the first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def make_staging(parent: Path, prefix: str) -> Path:
    """A new private directory `<prefix><pid>-<random>` in `parent` (same filesystem as the destination)."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _owner(name: str, prefix: str) -> int | None:
    """The process id in a staging folder's name; None for a name without one (an older version's)."""
    head = name[len(prefix):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def remove_leftovers(parent: Path, prefix: str, keep: Path | None = None) -> list[Path]:
    """Remove the `prefix*` folders and files in `parent` that a process no longer alive left behind (never
    `keep`, never one whose process still runs); returns what was removed."""
    removed = []
    try:
        candidates = [entry for entry in parent.iterdir() if entry.name.startswith(prefix)]
    except OSError:
        return removed
    for entry in candidates:
        owner = _owner(entry.name, prefix)
        if entry == keep or (owner is not None and _alive(owner)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
