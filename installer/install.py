"""`install`: put a model into a directory of its own, resumable, verified, with rendered wrappers."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core import __version__
from core.errors import UserError
from core.model_dir import ModelDir, write_json_atomic
from core.settings import directory_name, validate_name
from core.system import free_disk_bytes
from core.units import human_bytes
from handlers import ModelHandler, handler_for_config
from installer.estimate import native_dtype, parameter_count
from installer.render import render_wrappers
from installer.vision_info import vision_summary
from llamacpp.gguf_reader import DTYPE_BYTES
from sources import gguf as gguf_source
from sources.base import ModelMetadata, Source
from sources.fetch import bytes_still_needed, files_on_disk, verify
from sources.registry import source_for
from sources.selection import Selection, select_files

DISK_MARGIN_BYTES = 256 * 1024**2


class InstallError(UserError, RuntimeError):
    """The install cannot go on; the message is for the user."""


@dataclass
class InstallOptions:
    """What the user asked `install` for."""

    model: str
    models_dir: Path
    name: str | None = None
    revision: str | None = None
    quantization: str = "none"
    dtype: str = "auto"
    device: str = "auto"
    force: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
    gguf_file: str | None = None  # one GGUF file of a Hub repository


@dataclass
class InstallResult:
    """What `install` did."""

    model_dir: ModelDir
    info: dict
    already_installed: bool = False
    seconds: float = 0.0
    fetch_mode: str = ""


def needs_remote_code(config: dict, handler: ModelHandler) -> bool:
    """Whether loading this config runs code from the repository."""
    if handler.trust_remote_code:
        return True
    if not config.get("auto_map"):
        return False
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return config.get("model_type") not in CONFIG_MAPPING_NAMES


def check_compatible(options: InstallOptions, meta: ModelMetadata, handler: ModelHandler) -> None:
    """Refuse options the model cannot honour, before anything is downloaded."""
    if needs_remote_code(meta.config, handler) and not options.trust_remote_code:
        raise InstallError(
            f"{meta.source} runs custom code from its repository; re-run with --trust-remote-code if you trust it."
        )
    if options.quantization != "none" and options.quantization not in handler.quantization:
        supported = ", ".join(handler.quantization) or "none"
        raise InstallError(
            f"The {handler.name} handler cannot quantize to {options.quantization} (supported: {supported})."
        )


def _check_pickles(selection: Selection, options: InstallOptions, echo: Callable[[str], None]) -> None:
    if not selection.files or not any(f.path.endswith((".safetensors", ".bin", ".pt", ".pth")) for f in selection.files):
        raise InstallError(f"{options.model} has no weight files (safetensors or PyTorch) at its top level.")
    if selection.pickle_only:
        if not options.allow_pickle:
            raise InstallError(
                f"{options.model} ships only pickle (.bin/.pt) weights, which can run code when loaded; "
                "re-run with --allow-pickle if you trust it."
            )
        echo("Warning: installing pickle weights (.bin/.pt); loading them can execute code from the repository.")


def _check_disk(selection: Selection, weights_dir: Path, force: bool) -> int:
    needed = selection.total_bytes if force else bytes_still_needed(selection, weights_dir)
    free = free_disk_bytes(weights_dir)
    if needed + DISK_MARGIN_BYTES > free:
        raise InstallError(
            f"Not enough disk space in {weights_dir.parent}: need {human_bytes(needed + DISK_MARGIN_BYTES)}, "
            f"{human_bytes(free)} free."
        )
    return needed


def install_extra_requirements(handler: ModelHandler, model_dir: ModelDir, echo: Callable[[str], None]) -> list[str]:
    """pip-install the handler's extra packages into <model dir>/.deps unless the shared environment has them."""
    from importlib import metadata

    from packaging.requirements import Requirement

    missing = []
    for spec in handler.extra_requirements:
        requirement = Requirement(spec)
        try:
            if requirement.specifier.contains(metadata.version(requirement.name), prereleases=True):
                continue
        except metadata.PackageNotFoundError:
            pass
        missing.append(spec)
    if missing:
        echo(f"Installing extra packages for the {handler.name} handler into {model_dir.deps}: {', '.join(missing)}")
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(model_dir.deps), *missing]
        if subprocess.run(command, check=False).returncode != 0:
            raise InstallError(f"pip could not install {', '.join(missing)} for the {handler.name} handler.")
    return list(handler.extra_requirements)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _build_info(options, meta, handler, selection, records, extra) -> dict:
    parameters, parameter_source = parameter_count(meta, options.trust_remote_code)
    return {
        "complete": True,
        "source": meta.source,
        "source_kind": meta.kind,
        "revision": meta.revision,
        "family": meta.config.get("model_type"),
        "architecture": (meta.config.get("architectures") or [None])[0],
        "handler": handler.name,
        "parameters": parameters,
        "parameters_from": parameter_source,
        "dtype": native_dtype(meta),
        "trust_remote_code": options.trust_remote_code,
        "defaults": {"quantization": options.quantization, "dtype": options.dtype, "device": options.device},
        "lora": {
            "rank": handler.lora_rank(parameters or 0),
            "alpha": handler.lora_alpha(parameters or 0),
            "target_modules": handler.default_targets(parameters or 0),
        },
        "extra_requirements": extra,
        "multimodal": handler.is_multimodal(meta.config),
        "vision": vision_summary(meta.config, handler, options.trust_remote_code),
        "files": records,
        "download_bytes": selection.total_bytes,
        "installed_at": _now(),
        "installer_version": __version__,
    }


def install(options: InstallOptions, echo: Callable[[str], None] = print) -> InstallResult:
    """Install (or resume installing) a model; returns where it went and its model_info."""
    started = time.monotonic()
    source = source_for(options.model)
    if options.gguf_file and not source.takes_gguf_file:
        raise InstallError("--gguf-file picks one file of a Hub repository (org/name); "
                           f"{options.model} is a {source.name} source.")
    name = validate_name(options.name) if options.name else directory_name(options.model)
    model_dir = ModelDir(options.models_dir / name)
    if model_dir.status() == "ready" and not options.force:
        previous = model_dir.read_info() or {}
        if previous.get("source") not in (None, options.model):
            raise InstallError(f"{model_dir.root} already holds {previous['source']}; choose another --name.")
        echo(f"{options.model} is already installed in {model_dir.root} (use --force to reinstall).")
        return InstallResult(model_dir, previous, already_installed=True)

    if source.is_gguf(options.model, options.gguf_file):
        meta, fetch_mode, extra_info = _install_gguf(options, source, model_dir, echo)
        handler = handler_for_config(meta.config)
        selection = select_files(files_on_disk(model_dir.weights))
    else:
        meta, handler, selection, fetch_mode = _install_files(options, source, model_dir, echo)
        extra_info = {}
    records = verify(selection, model_dir.weights)
    extra = install_extra_requirements(handler, model_dir, echo)
    info = {**_build_info(options, meta, handler, selection, records, extra), **extra_info}
    render_wrappers(model_dir, info)
    model_dir.write_info(info)
    model_dir.marker.unlink(missing_ok=True)
    return InstallResult(model_dir, info, seconds=time.monotonic() - started, fetch_mode=fetch_mode)


def _start(model_dir: ModelDir, options: InstallOptions) -> None:
    """Mark the directory incomplete until everything is verified (list shows it; resume knows it)."""
    model_dir.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(model_dir.marker, {"source": options.model, "started_at": _now()})


def _install_files(options, source: Source, model_dir, echo) -> tuple[ModelMetadata, ModelHandler, Selection, str]:
    """The model's own files into model/ (Hub download, local link or copy, or a built-in built here)."""
    meta = source.metadata_before_fetch(options.model, options.revision)
    selection = None
    if meta is not None:
        handler = handler_for_config(meta.config)
        check_compatible(options, meta, handler)
        selection = select_files(meta.files)
        _check_pickles(selection, options, echo)
        needed = _check_disk(selection, model_dir.weights, options.force)
        echo(f"Installing {options.model} ({handler.name} handler) into {model_dir.root}: "
             f"{len(selection.files)} files, {human_bytes(needed)} to fetch.")
    _start(model_dir, options)
    meta, fetch_mode = source.fetch(options.model, meta, selection, model_dir.weights, options.force, echo)
    if selection is None:  # built here: what was built is what is installed
        selection = select_files(files_on_disk(model_dir.weights))
    return meta, handler_for_config(meta.config), selection, fetch_mode


def _install_gguf(options, source: Source, model_dir, echo) -> tuple[ModelMetadata, str, dict]:
    """A GGUF source: resolve it, check it, convert it to safetensors in model/ (see sources/gguf.py)."""
    found = source.resolve_gguf(options.model, options.gguf_file, options.revision, echo)
    if found.path is not None:  # local, Ollama or packaged: check everything before creating anything
        info = gguf_source.read_checked(found.path)
        _check_compatible_gguf(options, found, info)
        _check_conversion_disk(info, model_dir, 0)
        _start(model_dir, options)
    else:
        _check_conversion_disk(None, model_dir, found.hub_file.size)
        _start(model_dir, options)
        echo(f"Downloading {found.hub_file.path} ({human_bytes(found.hub_file.size)}) from {options.model} ...")
        info = gguf_source.read_checked(gguf_source.fetch_hub_file(found, model_dir.root))
        _check_compatible_gguf(options, found, info)
        _check_conversion_disk(info, model_dir, 0)
    echo(f"Installing {options.model} ({info.architecture} GGUF, {info.quantization}, "
         f"{human_bytes(info.file_bytes)}) into {model_dir.root}.")
    gguf_source.convert_into(info, model_dir.weights, echo)
    shutil.rmtree(model_dir.root / gguf_source.HUB_DOWNLOAD_SUBDIR, ignore_errors=True)
    meta = gguf_source.converted_metadata(found, info, model_dir.weights)
    return meta, "converted from GGUF", gguf_source.gguf_record(found, info)


def _check_compatible_gguf(options: InstallOptions, source, info) -> None:
    meta = gguf_source.metadata(source, info)
    check_compatible(options, meta, handler_for_config(meta.config))


def _check_conversion_disk(info, model_dir: ModelDir, download_bytes: int) -> None:
    """Room for the download (Hub) or for the dequantized safetensors (parameters x bytes of their dtype)."""
    needed = download_bytes if info is None else info.parameters * DTYPE_BYTES[info.dtype]
    free = free_disk_bytes(model_dir.root)
    if needed + DISK_MARGIN_BYTES > free:
        raise InstallError(
            f"Not enough disk space in {model_dir.root.parent}: need {human_bytes(needed + DISK_MARGIN_BYTES)}, "
            f"{human_bytes(free)} free."
        )


def model_info_json(model_dir: ModelDir) -> str:
    """Pretty model_info.json for display."""
    return json.dumps(model_dir.read_info(), indent=2)
