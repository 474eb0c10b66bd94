"""Recognising a full disk, whatever library reported it."""

from __future__ import annotations

import errno

# torch's and safetensors' own wording of a short write, which reaches us without an errno
SHORT_WRITE_WORDS = ("No space left on device", "unexpected pos", "file write failed", "Disk quota exceeded")


def is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception's chain, including torch's and safetensors' own wording."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(words in str(exc) for words in SHORT_WRITE_WORDS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
