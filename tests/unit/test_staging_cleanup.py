"""Staging folders left by killed installs are removed by the next one, and only once they are stale."""

import os
import time

from sources.fetch import STALE_STAGING_SECONDS, remove_stale_staging


def test_only_stale_builtin_staging_is_removed(tmp_path):
    stale, fresh, other = tmp_path / ".builtin-old", tmp_path / ".builtin-new", tmp_path / "model"
    for folder in (stale, fresh, other):
        folder.mkdir()
    old = time.time() - STALE_STAGING_SECONDS - 60
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    remove_stale_staging(tmp_path)
    assert not stale.exists() and fresh.is_dir() and other.is_dir()
