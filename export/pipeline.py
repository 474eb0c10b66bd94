"""`llm-installer export`: take a tuned model elsewhere — merged safetensors, GGUF (llama.cpp's own
converter), a LoRA GGUF, or an Ollama directory.

The formats are the targets in export/registry.py; this module runs the steps they share. Every format is
built under a temporary name beside its destination and renamed into place at the end, so a failure, a full
disk or Ctrl+C never leaves a partial export behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from core import __version__
from core.adapter import AdapterError, inspect_adapter
from core.disk import is_disk_full
from core.model_dir import ModelDir, write_json_atomic
from core.staging import make_staging, remove_leftovers
from core.units import human_bytes
from export import registry
from export.job import EXPORT_INFO, OUTTYPES, TORCH_DTYPES, ExportError, ExportResult, Job, native_dtype
from export.target import ExportTarget
from handlers import is_multimodal_dir
from llamacpp.quantize import CONVERTER_TYPES, require_quantizer

FORMATS = registry.names()
EXPORTS_SUBDIR = "exports"
SPACE_MARGIN = 1.05
SPACE_SLACK_BYTES = 64 << 20


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
    target = registry.get(fmt)
    if llama_cpp is not None and not target.gguf:
        gguf_formats = registry.names(gguf=True)
        raise ExportError(f"--llama-cpp is for the GGUF formats ({', '.join(gguf_formats)}), not {fmt}.")
    model = ModelDir(Path(model_dir).expanduser().resolve())
    _refuse_multimodal_gguf(model, target)
    job = Job(model, _ready_info(model), fmt, _outtype(target, outtype), None, llama_cpp, echo)
    if not job.outtype:
        job.outtype = {dtype: name for name, dtype in TORCH_DTYPES.items()}[native_dtype(model)]
    job.adapter = _choose_adapter(job, target, adapter, no_lora)
    if create is not None:
        if not target.creates:
            raise ExportError(f"--create goes with --format {' or '.join(registry.names(creates=True))} only.")
        target.check_create(create)
    path = _destination(job, target, out)
    needed = target.needed_bytes(job)
    staging = _staging(path)
    try:
        _check_space(staging, needed)
        built = _build(job, target, staging, path.name, needed)
        _publish(built, path)
        target.mark(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for prefix in _staging_prefixes(path):  # what killed exports to the same place left behind
        remove_leftovers(path.parent, prefix)
    files = _sizes(path)
    result = ExportResult(fmt, path, files, time.monotonic() - started, job.outtype,
                          Path(job.adapter.path) if job.adapter else None, job.notes)
    target.after(job, path, create)
    return result


def _refuse_multimodal_gguf(model: ModelDir, target: ExportTarget) -> None:
    if target.gguf and is_multimodal_dir(model.weights):
        instead = " or ".join(f"--format {name}" for name in registry.names(gguf=False))
        raise ExportError(f"--format {target.name} of a multimodal model is not supported (llama.cpp keeps its vision "
                          f"part in a separate projector file, which this exporter does not make); use {instead}.")


def _ready_info(model: ModelDir) -> dict:
    if not model.info_path.is_file() and not model.marker.exists():
        raise ExportError(f"{model.root} is not an installed model (no model_info.json); install one with "
                          f"llm-installer install.")
    if model.status() != "ready":
        raise ExportError(f"The install in {model.root} is incomplete; run the same install command again to finish "
                          f"it, then export.")
    return model.read_info() or {}


def _outtype(target: ExportTarget, outtype: str | None) -> str:
    if outtype is None:
        return target.default_outtype or ""  # None: the base model's own dtype, set once the model is known
    if outtype not in OUTTYPES:
        raise ExportError(f"Unknown --outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}.")
    if outtype not in target.outtypes:
        raise ExportError(target.refuse_outtype(outtype))
    if outtype not in CONVERTER_TYPES:
        require_quantizer(outtype)  # before any slow work
    return outtype


def _choose_adapter(job: Job, target: ExportTarget, adapter: Path | None, no_lora: bool):
    """The adapter to export (checked against the base model), or None for the base model alone."""
    if adapter is not None and no_lora:
        raise ExportError("Give either --adapter or --no-lora, not both.")
    if no_lora:
        if target.exports_adapter:
            raise ExportError(f"--format {job.fmt} exports an adapter, so --no-lora makes no sense with it.")
        job.note("--no-lora: exporting the base model without an adapter.")
        return None
    path = Path(adapter).expanduser().resolve() if adapter is not None else job.model.adapter
    if not (path / "adapter_config.json").is_file():
        if adapter is not None:
            raise ExportError(f"--adapter {path}: no adapter there (adapter_config.json missing).")
        if target.exports_adapter:
            raise ExportError(f"No adapter in {path}: train one with ./train.sh first, or give --adapter PATH.")
        job.note(f"No adapter in {path}: exporting the base model.")
        return None
    try:
        found = inspect_adapter(path, job.model.root, job.info)
    except AdapterError as exc:
        raise ExportError(str(exc).replace("serve it with that model, or use --no-lora",
                                           "export it with that model")) from exc
    job.echo(f"Adapter: {found.describe()}.")
    _note_quantized(job, target, path)
    return found


def _note_quantized(job: Job, target: ExportTarget, adapter_path: Path) -> None:
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
    if target.merges_adapter:
        job.note(f"{how}: the adapter is merged into the unquantized weights in {job.model.weights}, so the export "
                 f"is full precision" + target.full_precision_hint)


def _destination(job: Job, target: ExportTarget, out: Path | None) -> Path:
    if out is None:
        return job.model.root / EXPORTS_SUBDIR / target.default_name(job)
    given = Path(out).expanduser().absolute()
    if given.is_symlink():  # replacing it would replace the link, not what it points to
        raise ExportError(f"--out {given} is a symbolic link (to {os.path.realpath(given)}); give the real path "
                          "or another name.")
    path = target.place(job, given)
    _refuse_inside_sources(job, path)
    if path.is_symlink() or (path.exists() and not target.is_earlier_export(path)):
        raise ExportError(f"{path} already exists and is not an earlier export; choose another --out or remove it.")
    return path


def _refuse_inside_sources(job: Job, path: Path) -> None:
    """An export inside the weights (or the adapter) it is made from would change them while it is read."""
    real = Path(os.path.realpath(path.parent)) / path.name
    sources = [(job.model.weights, "the model's weights")]
    if job.adapter is not None:
        sources.append((Path(job.adapter.path), "the adapter"))
    for folder, what in sources:
        folder = Path(os.path.realpath(folder))
        if real == folder or folder in real.parents:
            raise ExportError(f"--out {path} is inside {what} ({folder}), which the export reads; choose a path "
                              "outside it.")


def _staging_prefixes(path: Path) -> tuple[str, str]:
    """Name prefixes of the staging folder and of the set-aside earlier export beside `path`."""
    return f".{path.name}.tmp-", f".{path.name}.old-"


def _staging(path: Path) -> Path:
    """A temporary directory beside `path` (same filesystem, so the final rename is atomic)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return make_staging(path.parent, _staging_prefixes(path)[0])
    except OSError as exc:
        raise ExportError(f"Cannot write the export to {path.parent}: {exc.strerror or exc}; choose another "
                          f"--out.") from exc


def _space_wanted(needed: int) -> int:
    """The export's estimate with its margin: 5% more, and 64 MiB for the converter's own files and logs."""
    return int(needed * SPACE_MARGIN + SPACE_SLACK_BYTES)


def _check_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < _space_wanted(needed):
        raise ExportError(f"Not enough disk space in {directory}: the export needs about {human_bytes(needed)}, "
                          f"{human_bytes(_space_wanted(needed))} with the margin kept free (5% and "
                          f"{human_bytes(SPACE_SLACK_BYTES)}), and {human_bytes(free)} is free; free some space or "
                          "choose another --out.")


def _build(job: Job, target: ExportTarget, staging: Path, name: str, needed: int) -> Path:
    """Make the export inside `staging`; returns the finished file or directory there. A disk that fills up
    meanwhile is one sentence (the staging folder is removed by the caller, so nothing is left behind)."""
    built = staging / name
    try:
        target.build(job, built, staging)
        if built.is_dir():
            write_json_atomic(built / EXPORT_INFO, _provenance(job))
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise ExportError(f"The disk holding {staging.parent} filled up while writing the export (it needs about "
                          f"{human_bytes(_space_wanted(needed))}); nothing was left behind: free some space or "
                          "choose another --out.") from exc
    return built


def _provenance(job: Job) -> dict:
    return {"format": job.fmt, "outtype": job.outtype, "base_model": job.info.get("source"),
            "model_dir": str(job.model.root), "adapter": str(job.adapter.path) if job.adapter else None,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "llm_installer": __version__}


def _open_permissions(built: Path) -> None:
    """Temporary files and directories are private (0600/0700); the export gets the user's usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [built, *built.rglob("*")] if built.is_dir() else [built]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _publish(built: Path, path: Path) -> None:
    """Rename the finished export onto `path`; an earlier export there is removed only afterwards."""
    _open_permissions(built)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(built, path)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def _sizes(path: Path) -> dict[str, int]:
    if path.is_file():
        return {str(path): path.stat().st_size}
    return {str(p): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}
