"""A local stand-in for the Hugging Face Hub's file endpoints, for HF_ENDPOINT in tests.

Serves repositories from a directory (<root>/<org>/<name>/...) with the API routes
huggingface_hub uses: model info with file metadata, tree listing, and resolve with
HEAD, Range and ETag. Repositories can be marked gated, and file transfers throttled
so that a test can interrupt a download half-way.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class HubStandIn:
    """Start with `with HubStandIn(root) as hub:`; `hub.url` is the endpoint."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.gated: set[str] = set()
        self.throttle_bytes_per_second: int | None = None
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubStandIn:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def commit(self, repo: str) -> str:
        listing = "".join(f"{p}:{s}" for p, s in self._files(repo))
        return hashlib.sha1(listing.encode()).hexdigest()

    def _files(self, repo: str) -> list[tuple[str, int]]:
        base = self.root / repo
        return [(str(p.relative_to(base)), p.stat().st_size) for p in sorted(base.rglob("*")) if p.is_file()]

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _error(self, status: int, code: str, message: str) -> None:
                body = json.dumps({"error": message}).encode()
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, data) -> None:
                body = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _repo_ok(self, repo: str) -> bool:
                if not (hub.root / repo).is_dir():
                    self._error(404, "RepoNotFound", f"Repository {repo} not found")
                    return False
                if repo in hub.gated and "authorization" not in {k.lower() for k in self.headers}:
                    self._error(401, "GatedRepo", f"Access to {repo} is restricted")
                    return False
                return True

            def do_HEAD(self):
                self.do_GET()

            def do_GET(self):
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    self._api(parts[2:])
                elif len(parts) >= 5 and parts[2] == "resolve":
                    self._resolve("/".join(parts[:2]), "/".join(parts[4:]))
                else:
                    self._error(404, "EntryNotFound", f"No route {path}")

            def _api(self, rest: list[str]) -> None:
                repo = "/".join(rest[:2])
                if not self._repo_ok(repo):
                    return
                base = hub.root / repo
                if len(rest) >= 4 and rest[2] == "tree":
                    entries = []
                    for name, size in hub._files(repo):
                        entry = {"type": "file", "path": name, "size": size, "oid": hashlib.sha1(name.encode()).hexdigest()}
                        if name.endswith(LFS_SUFFIXES):
                            entry["lfs"] = {"oid": _sha256(base / name), "size": size, "pointerSize": 134}
                        entries.append(entry)
                    return self._json(entries)
                siblings = []
                for name, size in hub._files(repo):
                    sibling = {"rfilename": name, "size": size, "blobId": hashlib.sha1(name.encode()).hexdigest()}
                    if name.endswith(LFS_SUFFIXES):
                        sibling["lfs"] = {"sha256": _sha256(base / name), "size": size, "pointerSize": 134}
                    siblings.append(sibling)
                self._json({"id": repo, "modelId": repo, "sha": hub.commit(repo), "siblings": siblings,
                            "private": False, "gated": repo in hub.gated, "tags": []})

            def _resolve(self, repo: str, name: str) -> None:
                if not self._repo_ok(repo):
                    return
                file = hub.root / repo / name
                if not file.is_file():
                    return self._error(404, "EntryNotFound", f"{name} not found in {repo}")
                data = file.read_bytes()
                start = 0
                end = len(data) - 1
                range_header = self.headers.get("Range")
                if range_header and range_header.startswith("bytes="):
                    first, _, last = range_header[6:].partition("-")
                    start = int(first or 0)
                    end = min(int(last), end) if last else end
                etag = _sha256(file) if name.endswith(LFS_SUFFIXES) else hashlib.sha1(data).hexdigest()
                self.send_response(206 if range_header else 200)
                self.send_header("X-Repo-Commit", hub.commit(repo))
                self.send_header("ETag", f'"{etag}"')
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(end - start + 1))
                if range_header:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if self.command == "HEAD":
                    return
                self._send_body(data[start:end + 1])

            def _send_body(self, body: bytes) -> None:
                rate = hub.throttle_bytes_per_second
                if not rate:
                    self.wfile.write(body)
                    return
                chunk = max(1, rate // 20)
                try:
                    for offset in range(0, len(body), chunk):
                        self.wfile.write(body[offset:offset + chunk])
                        self.wfile.flush()
                        time.sleep(0.05)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler
