"""Which web pages may call the server from a browser: CORS (--allowed-origins) and the CSRF checks behind it.

A browser sends `Origin` with every cross-origin request and with same-origin POSTs. The server answers a request
whose Origin is neither its own nor allowed with a 403, so a page elsewhere cannot make it generate (also not
with a no-cors `text/plain` POST, which skips the preflight: a POST must be JSON by content type as well).
Allowed origins get CORS headers, and their preflights (OPTIONS) are answered before the API key is checked,
as browsers send preflights without credentials; the real request still needs the key.

The default allows loopback pages only (http(s)://localhost, 127.0.0.1, [::1] and *.localhost, any port), as
Ollama's OLLAMA_ORIGINS does by default; `--allowed-origins` adds origins (comma-separated, `*` wildcards as in
`https://*.example.com`, or `*` for any).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
DEFAULT_ORIGINS = tuple(f"{scheme}://{host}{port}" for scheme in ("http", "https")
                        for host in (*LOOPBACK_HOSTS, "*.localhost") for port in ("", ":*"))
ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type, OpenAI-Organization, OpenAI-Project, X-Stainless-*"
PREFLIGHT_MAX_AGE = "600"


def parse_origins(value: str | None) -> tuple[str, ...]:
    """The origins --allowed-origins adds to the loopback defaults; ValueError (one sentence) for one that is not
    scheme://host[:port]."""
    extra = []
    for item in (value or "").split(","):
        item = item.strip().rstrip("/")
        if not item:
            continue
        if item != "*":
            parts = urlsplit(item)
            if not parts.scheme or not parts.netloc or parts.path or parts.query:
                raise ValueError(f"--allowed-origins: {item!r} is not an origin (scheme://host[:port], such as "
                                 "https://app.example.com).")
        extra.append(item.lower())
    return (*DEFAULT_ORIGINS, *extra)


def origin_allowed(origin: str, allowed: tuple[str, ...], host_header: str) -> bool:
    """Whether a page from `origin` may call this server: its own origin (the chat page), or one that matches."""
    origin = origin.strip().lower()
    if origin == "null":  # sandboxed frames and file:// pages: no identity to allow
        return "*" in allowed
    if urlsplit(origin).netloc == host_header.strip().lower():
        return True
    return any(_matches(origin, pattern) for pattern in allowed)


def _matches(origin: str, pattern: str) -> bool:
    # Only `*` is a wildcard (fnmatch would read "[::1]" as a character class).
    return re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), origin) is not None


def cors_headers(origin: str) -> dict[str, str]:
    """Headers that let the allowed `origin` read the answer."""
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def preflight_headers(origin: str, requested_headers: str | None) -> dict[str, str]:
    """The answer to an allowed origin's preflight: the methods, the headers it asked for, and for how long."""
    return {**cors_headers(origin), "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": requested_headers or ALLOWED_HEADERS,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE}


def is_json(content_type: str | None) -> bool:
    """application/json (any charset) or a +json type; HTML forms and no-cors fetches cannot send these."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))
