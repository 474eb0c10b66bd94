"""Registry of model-family handlers, keyed by config.json `model_type` and architecture.

Each family module in this package calls `register(...)` at import time; `load_all()`
imports every module once, so adding a family means adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil

from handlers.base import ModelHandler

_BY_MODEL_TYPE: dict[str, ModelHandler] = {}
_BY_ARCHITECTURE: dict[str, ModelHandler] = {}
_BY_NAME: dict[str, ModelHandler] = {}
_NOT_FAMILIES = {"base", "registry", "chat_templates"}
GENERIC_NAME = "generic"
_loaded = False


def register(handler: ModelHandler) -> ModelHandler:
    """Add a handler; refuses duplicate names, model types or architectures."""
    if handler.name in _BY_NAME:
        raise ValueError(f"handler {handler.name!r} is registered twice")
    for key in handler.model_types:
        if key in _BY_MODEL_TYPE:
            raise ValueError(f"model_type {key!r} claimed by {_BY_MODEL_TYPE[key].name!r} and {handler.name!r}")
    for key in handler.architectures:
        if key in _BY_ARCHITECTURE:
            raise ValueError(f"architecture {key!r} claimed by {_BY_ARCHITECTURE[key].name!r} and {handler.name!r}")
    _BY_NAME[handler.name] = handler
    _BY_MODEL_TYPE.update(dict.fromkeys(handler.model_types, handler))
    _BY_ARCHITECTURE.update(dict.fromkeys(handler.architectures, handler))
    return handler


def load_all() -> None:
    """Import every family module of this package (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in pkgutil.iter_modules(_package_path()):
        if module.name not in _NOT_FAMILIES:
            importlib.import_module(f"{__package__}.{module.name}")


def _package_path() -> list[str]:
    package = importlib.import_module(__package__)
    return list(package.__path__)


def all_handlers() -> list[ModelHandler]:
    """Every registered handler, sorted by name."""
    load_all()
    return sorted(_BY_NAME.values(), key=lambda h: h.name)


def by_name(name: str) -> ModelHandler:
    """The handler called `name` (KeyError if none)."""
    load_all()
    return _BY_NAME[name]


def handler_for_config(config: dict) -> ModelHandler:
    """The handler for a config.json dict: architecture first, then model_type, else generic."""
    load_all()
    for architecture in config.get("architectures") or ():
        if architecture in _BY_ARCHITECTURE:
            return _BY_ARCHITECTURE[architecture]
    model_type = config.get("model_type", "")
    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    text_config = config.get("text_config") or {}
    if text_config.get("model_type") in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[text_config["model_type"]]
    return _BY_NAME[GENERIC_NAME]


def is_multimodal_dir(model_path) -> bool:
    """Whether the model directory's config.json is an image-text checkpoint of a multimodal family."""
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return handler_for_config(config).is_multimodal(config)
