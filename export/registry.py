"""The export targets, by --format name, in the order `export --help` lists them.

Adding a target: write export/<name>.py with a subclass of export.target.ExportTarget (its facts as class
attributes, default_name / needed_bytes / build as methods), then add one `register(...)` line below.
"""

from __future__ import annotations

from export.gguf import GgufTarget, LoraGgufTarget
from export.job import ExportError
from export.merged import MergedTarget
from export.ollama import OllamaTarget
from export.target import ExportTarget

_TARGETS: dict[str, ExportTarget] = {}


def register(target: ExportTarget) -> ExportTarget:
    """Add a target under its name; refuses a nameless or duplicate one."""
    if not target.name:
        raise ValueError(f"export target {type(target).__name__} has no name")
    if target.name in _TARGETS:
        raise ValueError(f"export target {target.name!r} is registered twice")
    _TARGETS[target.name] = target
    return target


def names(**facts: object) -> tuple[str, ...]:
    """The registered names, in registration order; with facts (gguf=True, ...) only the targets that have them."""
    return tuple(name for name, target in _TARGETS.items()
                 if all(getattr(target, fact) == value for fact, value in facts.items()))


def get(name: str) -> ExportTarget:
    """The target called `name`; an ExportError naming the choices when there is none."""
    if name not in _TARGETS:
        raise ExportError(f"Unknown export format {name!r}; choose one of {', '.join(names())}.")
    return _TARGETS[name]


register(MergedTarget())
register(GgufTarget())
register(LoraGgufTarget())
register(OllamaTarget())
