"""The export-target interface: the facts and steps the pipeline asks of each --format.

A target is a subclass of `ExportTarget` in its own module, registered in export/registry.py. Its class
attributes are its facts; its methods say where the export goes and how it is made. The defaults describe a
directory export (an earlier one is recognised by its export_info.json) that takes any GGUF --outtype.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from export.job import DEFAULT_GGUF_OUTTYPE, EXPORT_INFO, OUTTYPES, Job


class ExportTarget(ABC):
    """One `--format`: subclasses set `name` and the facts that differ, and implement the abstract methods."""

    name: str = ""
    #: the --outtype values it writes, and the one it writes without --outtype (None: the base model's dtype)
    outtypes: tuple[str, ...] = OUTTYPES
    default_outtype: str | None = DEFAULT_GGUF_OUTTYPE
    #: the adapter is what it exports: one is required, and --no-lora makes no sense
    exports_adapter: bool = False
    #: the adapter is merged into the base weights (False: it is exported apart from them)
    merges_adapter: bool = True
    #: made by llama.cpp's converter: --llama-cpp applies, and multimodal models are refused (no projector file)
    gguf: bool = False
    #: --create NAME applies (checked by check_create() before the export, carried out by after())
    creates: bool = False
    #: ends the note that an adapter trained on quantized weights is merged at full precision
    full_precision_hint: str = "."

    def refuse_outtype(self, outtype: str) -> str:
        """The message for an --outtype (one of OUTTYPES) that is not in `outtypes`."""
        return f"--format {self.name} writes {', '.join(self.outtypes)}, not {outtype}."

    @abstractmethod
    def default_name(self, job: Job) -> str:
        """The file or directory name an export gets when --out does not name one."""

    def place(self, job: Job, out: Path) -> Path:
        """Where `--out` puts the export (a directory export goes at `out` itself)."""
        return out

    def is_earlier_export(self, path: Path) -> bool:
        """`path` exists and may be replaced: an earlier export (or an empty directory), not the user's own.
        A directory export is marked by the export_info.json inside it."""
        return path.is_dir() and not path.is_symlink() and ((path / EXPORT_INFO).is_file() or not any(path.iterdir()))

    def mark(self, path: Path) -> None:
        """Record that the export now at `path` was written here, so a later export may replace it (a directory
        export carries its mark, export_info.json, inside)."""
        return None

    @abstractmethod
    def needed_bytes(self, job: Job) -> int:
        """Disk space the export needs at its peak, staging included."""

    @abstractmethod
    def build(self, job: Job, dest: Path, staging: Path) -> None:
        """Write the export at `dest` (inside `staging`, a private directory for intermediate files too)."""

    def check_create(self, name: str) -> None:
        """--create NAME can be carried out (only asked of targets that create): fail before the slow work."""
        return None

    def after(self, job: Job, path: Path, create: str | None) -> None:
        """A step once the export is in place at `path` (e.g. importing it into another tool)."""
        return None
