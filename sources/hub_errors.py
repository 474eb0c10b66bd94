"""Turning huggingface_hub failures into one sentence a user can act on."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from core.errors import UserError

OFFLINE_VALUES = {"1", "true", "yes", "on"}


class HubError(UserError, RuntimeError):
    """A Hub failure explained in one sentence."""


def hub_kwargs() -> dict:
    """Endpoint and cache read from the environment now (huggingface_hub reads them once at import)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return {
        "endpoint": os.environ.get("HF_ENDPOINT") or None,
        "cache_dir": os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub"),
    }


def is_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for no network at all."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in OFFLINE_VALUES


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Re-raise Hub exceptions as HubError with a clear message."""
    from huggingface_hub import errors

    if is_offline():
        raise HubError(f"Cannot reach the Hub for {repo_id}: offline mode is on (HF_HUB_OFFLINE).")
    token_hint = "" if os.environ.get("HF_TOKEN") else " Set HF_TOKEN (or run `hf auth login`) with a token that has access."
    try:
        yield
    except errors.GatedRepoError as exc:
        raise HubError(f"{repo_id} is gated: accept its license on the Hub first.{token_hint}") from exc
    except errors.RevisionNotFoundError as exc:
        raise HubError(f"{repo_id} has no revision '{revision}'.") from exc
    except errors.RepositoryNotFoundError as exc:
        raise HubError(f"{repo_id} was not found on the Hub (or is private).{token_hint}") from exc
    except errors.OfflineModeIsEnabled as exc:
        raise HubError(f"Cannot reach the Hub for {repo_id}: offline mode is on (HF_HUB_OFFLINE).") from exc
    except errors.LocalEntryNotFoundError as exc:
        raise HubError(f"Cannot reach the Hub for {repo_id} and the files are not cached locally.") from exc
    except errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        if status == 401:
            raise HubError(f"The Hub refused access to {repo_id} (HTTP 401).{token_hint}") from exc
        raise HubError(f"The Hub answered HTTP {status} for {repo_id}.") from exc
    except (OSError, ConnectionError) as exc:
        if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
            raise
        raise HubError(f"Cannot reach the Hub for {repo_id}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise HubError(f"Cannot reach the Hub for {repo_id}: {type(exc).__name__}.") from exc
        raise
