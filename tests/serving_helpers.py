"""Running the server in-process on a free port for tests (and the serving benchmark)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(state, host: str = "127.0.0.1"):
    """Serve `state` with uvicorn in a thread; yields the base URL; stops it on exit."""
    import uvicorn

    from serving.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host=host, port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def load_state(model_dir, *, lora: bool = True, api_key: str | None = None, max_concurrency: int = 1,
               loopback: bool = True, named: dict | None = None):
    """A ServerState with the engine loaded from an installed model directory (`named`: --lora NAME=PATH)."""
    from serving.cli import build_router, build_state, load_engine, resolve_adapter
    from serving.config import ServeConfig

    cfg = ServeConfig(model_dir=model_dir, no_lora=not lora, api_key=api_key, max_concurrency=max_concurrency,
                      lora=[f"{name}={path}" for name, path in (named or {}).items()]).apply_install_defaults()
    router = build_router(cfg, resolve_adapter(cfg))
    state = build_state(cfg, router)
    state.loopback = loopback
    state.engine = load_engine(cfg, router)
    return state
