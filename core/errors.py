"""The one error base of llm-installer.

A `UserError` is a mistake the user can fix (a bad flag, a missing file, an unreachable Hub):
the three entry points (`llm-installer`, `train.sh`, `start.sh`) print it as one sentence and
exit non-zero. Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; its message is one clear sentence."""
