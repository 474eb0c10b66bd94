"""Which model ids a server answers to: the request's `model` -> the base model or one adapter.

Ids follow vLLM's convention: the base model under its own name, every adapter under a name of its own
(`NAME:lora` for ./lora or --load-lora, `NAME` for each `--lora NAME=PATH`). An id the server does not
serve is a 404 `model_not_found`, never a silent fallback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.adapter import AdapterInfo
from serving.protocol import ApiError

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")


@dataclass(frozen=True)
class Route:
    """One id the server answers to; `key` is the adapter's name inside the engine (None: the base)."""

    model_id: str
    key: str | None = None
    adapter: AdapterInfo | None = None

    def card(self, base_id: str, source: str | None, created: int) -> dict:
        """Its entry in /v1/models (OpenAI's model object plus `parent`/`root` as vLLM writes them)."""
        card = {"id": self.model_id, "object": "model", "created": created, "owned_by": "llm-installer",
                "root": source, "parent": None, "adapter": None}
        if self.adapter is not None:
            adapter = self.adapter
            card.update(root=str(adapter.path), parent=base_id, adapter={
                "path": str(adapter.path), "rank": adapter.rank, "alpha": adapter.alpha,
                "base_model": adapter.base_model, "target_modules": adapter.target_modules})
        return card


class Router:
    """The base model plus named adapters; `resolve` maps a request's `model` to its Route."""

    def __init__(self, base_id: str, adapters: dict[str, AdapterInfo] | None = None, default: str | None = None,
                 source: str | None = None):
        self.base = Route(base_id)
        self.routes: dict[str, Route] = {base_id: self.base}
        for index, (name, info) in enumerate((adapters or {}).items()):
            if name in self.routes:
                raise ValueError(f"two models would be served as {name!r}")
            self.routes[name] = Route(name, f"adapter{index}", info)
        if default is not None and default not in self.routes:
            raise ValueError(f"default model {default!r} is not served")
        self.default = self.routes[default] if default else self.base
        self.source = source

    @property
    def adapters(self) -> list[Route]:
        """The adapter routes, in the order they were given."""
        return [route for route in self.routes.values() if route.key is not None]

    def resolve(self, model: str | None) -> Route:
        """The Route for a request's `model`; no model -> the default; unknown -> 404 model_not_found."""
        if model is None or model == "":
            return self.default
        route = self.routes.get(model)
        if route is None:
            served = ", ".join(self.routes)
            raise ApiError(404, f"The model '{model}' does not exist on this server; it serves: {served}.",
                           "model", "model_not_found")
        return route

    def cards(self, created: int) -> list[dict]:
        """/v1/models' data: the default first, then every other id the server answers to."""
        ordered = [self.default] + [r for r in self.routes.values() if r is not self.default]
        cards = [route.card(self.base.model_id, self.source, created) for route in ordered]
        for card in cards:
            card["default"] = card["id"] == self.default.model_id
        return cards
