"""start.sh's entry: check the adapter, then serve (or chat in the terminal, or hand over to vLLM).

The engine is the registry's entry for --engine (serving/engines/registry.py): an Engine loaded here and served by
serving/app.py (or --chat), or a hand-off to another server."""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading
import warnings
from pathlib import Path

from core.adapter import AdapterError, AdapterInfo, choose_adapter, inspect_adapter
from core.errors import UserError
from core.imports import hide_bitsandbytes
from serving.config import ServeConfig, ServeConfigError, parse_config
from serving.engines.base import Engine
from serving.engines.registry import ENGINES
from serving.router import Router

log = logging.getLogger("serve")


def load_engine(cfg: ServeConfig, router: Router) -> Engine:
    """The engine of this configuration with every adapter of `router` attached (blocking)."""
    adapters = {route.key: route.adapter for route in router.adapters}
    return ENGINES[cfg.engine].engine_class().load(cfg, adapters)


def resolve_adapter(cfg: ServeConfig) -> AdapterInfo | None:
    """The adapter served by default (./lora or --load-lora), checked against the base model, logged in words."""
    model_dir = Path(cfg.model_dir)
    path = choose_adapter(model_dir, cfg.no_lora, cfg.load_lora)
    if path is None:
        reason = "--no-lora given" if cfg.no_lora else f"no adapter in {model_dir / 'lora'}"
        log.info("Adapter: none (%s): serving the base model.", reason)
        return None
    adapter = inspect_adapter(path, model_dir, cfg.model_info)
    log.info("Adapter: %s.", adapter.describe())
    return adapter


def build_router(cfg: ServeConfig, adapter: AdapterInfo | None) -> Router:
    """The ids this server answers to: the base model, NAME:lora for the default adapter, each --lora NAME."""
    model_dir = Path(cfg.model_dir)
    base_id = model_dir.name
    adapters: dict[str, AdapterInfo] = {}
    if adapter is not None:
        adapters[f"{base_id}:lora"] = adapter
    for name, path in cfg.named_adapters().items():
        if name in (base_id, f"{base_id}:lora"):
            raise ServeConfigError(f"--lora {name}: that id is already the "
                                   f"{'base model' if name == base_id else './lora adapter'}; pick another NAME.")
        path = path.resolve()
        if not (path / "adapter_config.json").is_file():
            raise AdapterError(f"--lora {name}={path}: no adapter_config.json there.")
        adapters[name] = inspect_adapter(path, model_dir, cfg.model_info)
        log.info("Adapter %s: %s.", name, adapters[name].describe())
    default = f"{base_id}:lora" if adapter is not None else None
    return Router(base_id, adapters, default, source=cfg.model_info.get("source"))


def build_state(cfg: ServeConfig, router: Router):
    """The server's state before the model is loaded: the ids it serves and its security settings."""
    from serving.app import ServerState
    from serving.config import DEFAULT_MAX_BODY_BYTES
    from serving.images import body_limit

    limit = body_limit(cfg.max_body_bytes, DEFAULT_MAX_BODY_BYTES, Path(cfg.model_dir) / "model")
    return ServerState(router=router, api_key=cfg.api_key, loopback=cfg.loopback, max_body_bytes=limit,
                       allow_remote_images=cfg.allow_remote_images, allowed_origins=cfg.origins())


def check_port_free(host: str, port: int) -> None:
    """ServeConfigError (one sentence) when HOST:PORT cannot be bound, checked before anything says "Serving";
    bound with SO_REUSEADDR as uvicorn binds, so a port in TIME_WAIT from a previous run is not "taken"."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        reason = "is already in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
        raise ServeConfigError(f"Port {port} on {host} {reason}: stop what is listening there or pick another "
                               "with --port.") from exc


def _serve(cfg: ServeConfig, router: Router) -> int:
    import uvicorn

    from serving.app import create_app

    model_id, info = Path(cfg.model_dir).name, cfg.model_info
    check_port_free(cfg.host, cfg.port)
    state = build_state(cfg, router)
    if not cfg.loopback:
        log.warning("Listening on %s: anyone who can reach this machine can use the model%s.", cfg.host,
                    "" if cfg.api_key else " - set --api-key (or LLM_API_KEY)")

    def load():
        try:
            state.engine = load_engine(cfg, router)
            log.info("Model loaded on %s: ready.", state.engine.device)
        except Exception as exc:  # reported on /health and to requests
            state.load_error = f"Loading the model failed: {exc}"
            log.error(state.load_error)

    threading.Thread(target=load, name="load-model", daemon=True).start()
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    log.info("Serving %s (%s) at http://%s:%d/v1 - chat page http://%s:%d/ - %s", model_id, info.get("source"),
             shown, cfg.port, shown, cfg.port, "API key required" if cfg.api_key else "no API key")
    log.info("Model ids: %s (default %s).", ", ".join(router.routes), router.default.model_id)
    try:
        uvicorn.run(create_app(state), host=cfg.host, port=cfg.port, log_level="warning", access_log=False)
    finally:
        if state.engine is not None:
            state.engine.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run start.sh; user mistakes are one line on stderr and a non-zero status."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("httpx", "transformers", "peft", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cfg = parse_config(argv)
        if cfg.quantization == "none":
            hide_bitsandbytes()  # serving unquantized weights: peft's import of it would cost a second of start-up
        if not (Path(cfg.model_dir) / "model" / "config.json").is_file():
            raise ServeConfigError(f"No installed model in {cfg.model_dir} (model/config.json missing).")
        router = build_router(cfg, resolve_adapter(cfg))
        entry = ENGINES[cfg.engine]
        if entry.hands_off:  # vLLM: its own server replaces this process
            return entry.run_hand_off(cfg, router)
        entry.engine_class().check_available()  # one sentence now, not a failed load behind a running server
        if cfg.chat:
            from serving.terminal import chat_loop

            engine = load_engine(cfg, router)
            try:
                return chat_loop(engine, router, sys.stdin, sys.stdout, cfg.temperature)
            finally:
                engine.close()
        return _serve(cfg, router)
    except UserError as exc:
        if os.environ.get("LLM_INSTALLER_DEBUG"):
            raise
        print(f"Error: {exc}", file=sys.stderr)
        return 1
