"""What every export shares: the job being made (`Job`), its result, its error, and the facts about
output types and the base model's weights that the targets and the pipeline both need."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from core.model_dir import ModelDir, is_weight_file
from llamacpp.quantize import GGUF_TYPES

OUTTYPES = GGUF_TYPES  # the converter's own types, and the 4- to 6-bit ones llama.cpp's quantizer makes from f16
DEFAULT_GGUF_OUTTYPE = "f16"
EXPORT_INFO = "export_info.json"
# Bytes per parameter of each output type (q8_0: 32 int8 weights + one f16 scale per block; the k-quants mix
# types, so theirs are llama.cpp's published bits per weight).
BYTES_PER_PARAMETER = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
                       "q5_0": 22 / 32, "q4_k_m": 4.89 / 8, "q5_k_m": 5.70 / 8, "q6_k": 6.56 / 8}
TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}


class ExportError(UserError, ValueError):
    """The export cannot be made as asked; the message says why."""


@dataclass
class ExportResult:
    """What an export wrote: its path (a directory or a .gguf file), every file with its size, and timing."""

    format: str
    path: Path
    files: dict[str, int]
    seconds: float
    outtype: str
    adapter: Path | None
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    def as_json(self) -> dict:
        """A JSON-ready summary (`export --json`)."""
        return {"format": self.format, "path": str(self.path), "files": self.files, "bytes": self.total_bytes,
                "seconds": round(self.seconds, 2), "outtype": self.outtype,
                "adapter": str(self.adapter) if self.adapter else None, "notes": self.notes}


@dataclass
class Job:
    """One export being made: the model, its adapter (None: the base model) and the choices."""

    model: ModelDir
    info: dict
    fmt: str
    outtype: str
    adapter: object | None  # core.adapter.AdapterInfo
    llama_cpp: Path | None
    echo: Callable[[str], None]
    notes: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.echo(message)

    @property
    def name(self) -> str:
        return self.model.root.name

    @property
    def tag(self) -> str:
        """'tuned' for ./lora, the adapter directory's name for another one, 'base' without one."""
        if self.adapter is None:
            return "base"
        path = Path(self.adapter.path)
        return "tuned" if path == self.model.adapter else path.name


def native_dtype(model: ModelDir) -> str:
    """The dtype the base model's weights are stored in (config.json), float32 when unsaid."""
    try:
        config = json.loads((model.weights / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    dtype = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    return dtype if dtype in ("float32", "float16", "bfloat16") else "float32"


def _weights_bytes(model: ModelDir) -> int:
    return sum(p.stat().st_size for p in model.weights.rglob("*") if p.is_file() and is_weight_file(p.name))


def parameters(job: Job) -> int:
    """The base model's parameter count (model_info.json, else its weight files' size over the stored dtype's)."""
    stored = {"float32": 4, "float16": 2, "bfloat16": 2}[native_dtype(job.model)]
    return int(job.info.get("parameters") or _weights_bytes(job.model) // stored)
