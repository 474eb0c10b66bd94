"""The engines start.sh can serve with: each --engine name and where its code lives, imported only when that engine
is used (so `start.sh --help` and flag errors stay instant, without torch).

An engine is served in this process (an `Engine` subclass, serving/engines/base.py: the API and --chat run on it)
or hands the model to another server that replaces this process (vLLM). Adding an engine: its module in
serving/engines/ and one line in ENGINES.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.engines.base import Engine, ServeSettings
    from serving.router import Router


@dataclass(frozen=True)
class EngineEntry:
    """One --engine value. `engine`: "module:Class" of the Engine loaded into this process; or `hand_off`:
    "module:function" that gives the model to another server, called as function(cfg, router) -> exit status (it
    replaces this process). `about`: its line in --engine's help."""

    engine: str | None = None
    hand_off: str | None = None
    about: str | None = None

    @property
    def hands_off(self) -> bool:
        return self.hand_off is not None

    def engine_class(self) -> type[Engine]:
        """The Engine subclass (its module is imported now)."""
        if self.engine is None:
            raise TypeError(f"{self.hand_off} hands the model to another server: there is no engine to load here")
        return _resolve(self.engine)

    def run_hand_off(self, cfg: ServeSettings, router: Router) -> int:
        """Hand the model over to the other server (returns only when it cannot start, or in tests)."""
        function: Callable[..., int] = _resolve(self.hand_off)
        return function(cfg, router)


ENGINES: dict[str, EngineEntry] = {  # the first is the default
    "transformers": EngineEntry(engine="serving.engines.transformers_engine:TransformersEngine"),
    "llama.cpp": EngineEntry(engine="serving.engines.llamacpp_engine:LlamaCppEngine",
                             about="several times faster on a CPU (GGUF made on first use; install it with "
                                   "./llm-installer setup --engine llama.cpp)"),
    "vllm": EngineEntry(hand_off="serving.engines.vllm_engine:exec_vllm",
                        about="GPU production server (vLLM installed)"),
}
ENGINE_NAMES = tuple(ENGINES)
DEFAULT_ENGINE = ENGINE_NAMES[0]


def _resolve(target: str):
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def engine_help() -> str:
    """--engine's help: the default, then what each other engine is for."""
    others = "; ".join(f"{name}: {entry.about}" for name, entry in ENGINES.items() if entry.about)
    return f"Inference engine (default {DEFAULT_ENGINE}). {others}."
