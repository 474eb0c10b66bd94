"""Errors of the training configuration, shared by the flag parser, run files and the --data spelling."""

from __future__ import annotations

from core.errors import UserError


class ConfigError(UserError, ValueError):
    """A flag or run-file value the user must fix."""
