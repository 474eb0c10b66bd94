"""`llm-installer export`: take a tuned model elsewhere — merged safetensors, GGUF (llama.cpp's own
converter), a LoRA GGUF, or an Ollama directory.

Every format is built under a temporary name beside its destination and renamed into place at the end,
so a failure, a full disk or Ctrl+C never leaves a partial export behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from core.model_dir import ModelDir, write_json_atomic
from llamacpp.quantize import CONVERTER_TYPES, GGUF_TYPES

FORMATS = ("merged", "gguf", "lora-gguf", "ollama")
OUTTYPES = GGUF_TYPES  # the converter's own types, and the 4- to 6-bit ones llama.cpp's quantizer makes from f16
GGUF_FORMATS = ("gguf", "lora-gguf", "ollama")
DEFAULT_GGUF_OUTTYPE = "f16"
EXPORTS_SUBDIR = "exports"
EXPORT_INFO = "export_info.json"
# Bytes per parameter of each output type (q8_0: 32 int8 weights + one f16 scale per block; the k-quants mix
# types, so theirs are llama.cpp's published bits per weight).
BYTES_PER_PARAMETER = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
                       "q5_0": 22 / 32, "q4_k_m": 4.89 / 8, "q5_k_m": 5.70 / 8, "q6_k": 6.56 / 8}
TORCH_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
SPACE_MARGIN = 1.05
SPACE_SLACK_BYTES = 64 << 20


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


def export_model(model_dir: Path, fmt: str, out: Path | None = None, outtype: str | None = None,
                 adapter: Path | None = None, *, no_lora: bool = False, llama_cpp: Path | None = None,
                 create: str | None = None, echo: Callable[[str], None] = print) -> ExportResult:
    """Export the installed model in `model_dir` (with `adapter`, default its ./lora) as `fmt`.

    `outtype`: f32, f16, bf16, q8_0 or a llama.cpp 4- to 6-bit type (q4_k_m, ...; made by llama-cpp-python's
    quantizer) for the GGUF formats (default f16), f32/f16/bf16/q8_0 for lora-gguf, f32/f16/bf16 for merged
    (default: the base model's own dtype). `no_lora`: export the base model even when ./lora exists (gguf,
    ollama). `llama_cpp`: a llama.cpp checkout to convert with instead of the pinned release. `create`:
    run `ollama create NAME` on the result (ollama format).
    """
    started = time.monotonic()
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    if llama_cpp is not None and fmt not in GGUF_FORMATS:
        raise ExportError(f"--llama-cpp is for the GGUF formats ({', '.join(GGUF_FORMATS)}), not {fmt}.")
    model = ModelDir(Path(model_dir).expanduser().resolve())
    _refuse_multimodal_gguf(model, fmt)
    job = Job(model, _ready_info(model), fmt, _outtype(fmt, outtype), None, llama_cpp, echo)
    if not job.outtype:
        job.outtype = {dtype: name for name, dtype in TORCH_DTYPES.items()}[native_dtype(model)]
    job.adapter = _choose_adapter(job, adapter, no_lora)
    if create is not None:
        from export.ollama import check_create

        check_create(fmt, create)
    target = _target(job, out)
    needed = _needed_bytes(job)
    staging = _staging(target)
    try:
        _check_space(staging, needed)
        built = _build(job, staging, target.name)
        _publish(built, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    files = _sizes(target)
    result = ExportResult(fmt, target, files, time.monotonic() - started, job.outtype,
                          Path(job.adapter.path) if job.adapter else None, job.notes)
    if fmt == "ollama":
        from export.ollama import offer_create

        offer_create(target, create, job)
    return result


def _refuse_multimodal_gguf(model: ModelDir, fmt: str) -> None:
    from handlers import is_multimodal_dir

    if fmt != "merged" and is_multimodal_dir(model.weights):
        raise ExportError(f"--format {fmt} of a multimodal model is not supported (llama.cpp keeps its vision part in "
                          f"a separate projector file, which this exporter does not make); use --format merged.")


def _ready_info(model: ModelDir) -> dict:
    if not model.info_path.is_file() and not model.marker.exists():
        raise ExportError(f"{model.root} is not an installed model (no model_info.json); install one with "
                          f"llm-installer install.")
    if model.status() != "ready":
        raise ExportError(f"The install in {model.root} is incomplete; run the same install command again to finish "
                          f"it, then export.")
    return model.read_info() or {}


def _outtype(fmt: str, outtype: str | None) -> str:
    if outtype is None:
        return "" if fmt == "merged" else DEFAULT_GGUF_OUTTYPE  # merged: the base model's own dtype, set later
    if outtype not in OUTTYPES:
        raise ExportError(f"Unknown --outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}.")
    if fmt == "merged" and outtype not in TORCH_DTYPES:
        raise ExportError(f"--format merged writes safetensors in f32, f16 or bf16, not {outtype}; use --format gguf "
                          f"--outtype {outtype} for a quantized file.")
    if fmt == "lora-gguf" and outtype not in CONVERTER_TYPES:
        raise ExportError(f"--format lora-gguf writes the adapter in {', '.join(CONVERTER_TYPES)}, not {outtype}; "
                          f"quantize the model instead with --format gguf --outtype {outtype}.")
    if outtype not in CONVERTER_TYPES:
        from llamacpp.quantize import require_quantizer

        require_quantizer(outtype)  # before any slow work
    return outtype


def _choose_adapter(job: Job, adapter: Path | None, no_lora: bool):
    """The adapter to export (checked against the base model), or None for the base model alone."""
    from core.adapter import AdapterError, inspect_adapter

    if adapter is not None and no_lora:
        raise ExportError("Give either --adapter or --no-lora, not both.")
    if no_lora:
        if job.fmt in ("merged", "lora-gguf"):
            raise ExportError(f"--format {job.fmt} exports an adapter, so --no-lora makes no sense with it.")
        job.note("--no-lora: exporting the base model without an adapter.")
        return None
    path = Path(adapter).expanduser().resolve() if adapter is not None else job.model.adapter
    if not (path / "adapter_config.json").is_file():
        if adapter is not None:
            raise ExportError(f"--adapter {path}: no adapter there (adapter_config.json missing).")
        if job.fmt in ("merged", "lora-gguf"):
            raise ExportError(f"No adapter in {path}: train one with ./train.sh first, or give --adapter PATH.")
        job.note(f"No adapter in {path}: exporting the base model.")
        return None
    try:
        found = inspect_adapter(path, job.model.root, job.info)
    except AdapterError as exc:
        raise ExportError(str(exc).replace("serve it with that model, or use --no-lora",
                                           "export it with that model")) from exc
    job.echo(f"Adapter: {found.describe()}.")
    _note_quantized(job, path)
    return found


def _note_quantized(job: Job, adapter_path: Path) -> None:
    """Adapters trained with QLoRA/8-bit, or installs that run quantized, merge into the full-precision
    weights in model/: say so."""
    try:
        hyper = json.loads((adapter_path / "adapter_info.json").read_text(encoding="utf-8")).get("hyperparameters", {})
    except (OSError, ValueError):
        hyper = {}
    default = (job.info.get("defaults") or {}).get("quantization", "none")
    if hyper.get("method") == "qlora" or hyper.get("use_8bit"):
        how = f"The adapter was trained on {'4-bit (QLoRA)' if hyper.get('method') == 'qlora' else '8-bit'} weights"
    elif default not in (None, "none"):
        how = f"This model is set to run {default} quantized"
    else:
        return
    if job.fmt != "lora-gguf":
        job.note(f"{how}: the adapter is merged into the unquantized weights in {job.model.weights}, so the export "
                 f"is full precision" + (" (quantize it with --format gguf --outtype q8_0)." if job.fmt == "merged"
                                         else "."))


def default_filename(job: Job) -> str:
    """The file or directory name an export gets when --out does not name one."""
    if job.fmt == "merged":
        return f"{job.name}-merged" if job.tag == "tuned" else f"{job.name}-{job.tag}-merged"
    if job.fmt == "ollama":
        return f"{job.name}-ollama" if job.tag == "tuned" else f"{job.name}-{job.tag}-ollama"
    if job.fmt == "lora-gguf":
        return f"{job.name}-lora-{job.outtype}.gguf" if job.tag == "tuned" else \
            f"{job.name}-{job.tag}-lora-{job.outtype}.gguf"
    return f"{job.name}-{job.tag}-{job.outtype}.gguf"


def _is_replaceable(path: Path, fmt: str) -> bool:
    """An earlier export (or an empty directory) may be replaced; anything else is the user's and is not."""
    if fmt in ("gguf", "lora-gguf"):
        return path.is_file() and path.suffix == ".gguf"
    return path.is_dir() and ((path / EXPORT_INFO).is_file() or not any(path.iterdir()))


def _target(job: Job, out: Path | None) -> Path:
    if out is None:
        return job.model.root / EXPORTS_SUBDIR / default_filename(job)
    target = Path(out).expanduser().absolute()
    if job.fmt in ("gguf", "lora-gguf") and target.is_dir():
        target = target / default_filename(job)
    elif job.fmt in ("gguf", "lora-gguf") and target.suffix != ".gguf":
        raise ExportError(f"--out {target}: a GGUF file name ends in .gguf (or give an existing directory).")
    if target.exists() and not _is_replaceable(target, job.fmt):
        raise ExportError(f"{target} already exists and is not an earlier export; choose another --out or remove it.")
    return target


def _staging(target: Path) -> Path:
    """A temporary directory beside `target` (same filesystem, so the final rename is atomic)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise ExportError(f"Cannot write the export to {target.parent}: {exc.strerror or exc}; choose another "
                          f"--out.") from exc


def _weights_bytes(model: ModelDir) -> int:
    from core.model_dir import is_weight_file

    return sum(p.stat().st_size for p in model.weights.rglob("*") if p.is_file() and is_weight_file(p.name))


def native_dtype(model: ModelDir) -> str:
    """The dtype the base model's weights are stored in (config.json), float32 when unsaid."""
    try:
        config = json.loads((model.weights / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    dtype = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    return dtype if dtype in ("float32", "float16", "bfloat16") else "float32"


def _parameters(job: Job) -> int:
    stored = {"float32": 4, "float16": 2, "bfloat16": 2}[native_dtype(job.model)]
    return int(job.info.get("parameters") or _weights_bytes(job.model) // stored)


def _needed_bytes(job: Job) -> int:
    """Disk space the export needs at its peak (the GGUF formats write a merged copy first)."""
    if job.fmt == "lora-gguf":
        adapter_bytes = sum(p.stat().st_size for p in Path(job.adapter.path).glob("adapter_model.*"))
        return adapter_bytes * 2
    parameters = _parameters(job)
    if job.fmt == "merged":
        return int(parameters * BYTES_PER_PARAMETER[job.outtype])
    from export.gguf import intermediate_dtype, needs_merged_copy

    merged = parameters * (4 if intermediate_dtype(job) == "float32" else 2) if needs_merged_copy(job) else 0
    sixteen_bit = parameters * 2 if job.outtype not in CONVERTER_TYPES else 0  # the quantizer's input
    return int(merged + sixteen_bit + parameters * BYTES_PER_PARAMETER[job.outtype])


def _check_space(directory: Path, needed: int) -> None:
    from core.units import human_bytes

    free = shutil.disk_usage(directory).free
    if free < needed * SPACE_MARGIN + SPACE_SLACK_BYTES:
        raise ExportError(f"Not enough disk space in {directory}: the export needs about {human_bytes(needed)} and "
                          f"{human_bytes(free)} is free; free some space or choose another --out.")


def _build(job: Job, staging: Path, name: str) -> Path:
    """Make the export inside `staging`; returns the finished file or directory there."""
    if job.fmt == "merged":
        from export.merged import write_merged

        built = staging / name
        write_merged(job, built)
    elif job.fmt in ("gguf", "lora-gguf"):
        from export.gguf import write_gguf, write_lora_gguf

        built = staging / name
        (write_lora_gguf if job.fmt == "lora-gguf" else write_gguf)(job, built, staging)
    else:
        from export.ollama import write_ollama

        built = staging / name
        write_ollama(job, built, staging)
    if built.is_dir():
        write_json_atomic(built / EXPORT_INFO, _provenance(job))
    return built


def _provenance(job: Job) -> dict:
    from core import __version__

    return {"format": job.fmt, "outtype": job.outtype, "base_model": job.info.get("source"),
            "model_dir": str(job.model.root), "adapter": str(job.adapter.path) if job.adapter else None,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "llm_installer": __version__}


def _open_permissions(built: Path) -> None:
    """Temporary files and directories are private (0600/0700); the export gets the user's usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [built, *built.rglob("*")] if built.is_dir() else [built]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _publish(built: Path, target: Path) -> None:
    """Rename the finished export onto `target`; an earlier export there is removed only afterwards."""
    _open_permissions(built)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(built, target)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def _sizes(target: Path) -> dict[str, int]:
    if target.is_file():
        return {str(target): target.stat().st_size}
    return {str(p): p.stat().st_size for p in sorted(target.rglob("*")) if p.is_file()}
