"""`doctor`: one ok/warn/fail line per thing that decides whether installs, training and serving work."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from core.system import free_disk_bytes, machine_info
from core.units import human_bytes

KEY_PACKAGES = ("transformers", "peft", "huggingface-hub", "datasets", "accelerate", "bitsandbytes", "tensorboard")
LOW_DISK_BYTES = 20 * 1024**3
LOW_RAM_BYTES = 8 * 1024**3


@dataclass
class Finding:
    """One doctor line."""

    level: str  # ok, warn, fail
    topic: str
    detail: str


def _python() -> Finding:
    ok = sys.version_info >= (3, 10)
    return Finding("ok" if ok else "fail", "python", f"{platform.python_version()} at {sys.executable}")


def _torch() -> list[Finding]:
    try:
        import torch
    except ImportError:
        return [Finding("fail", "torch", "not installed")]
    findings = [Finding("ok", "torch", torch.__version__)]
    if torch.cuda.is_available():
        findings.append(Finding("ok", "cuda", f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"))
    else:
        findings.append(Finding("warn", "cuda", "not available: training and serving run on the CPU (slow)"))
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    findings.append(Finding("ok", "mps", "available" if mps else "not available (Apple GPUs only)"))
    return findings


def _gpus() -> list[Finding]:
    machine = machine_info()
    findings = [Finding("ok", f"gpu {i}", f"{g.name}, {human_bytes(g.total_bytes)}") for i, g in enumerate(machine.gpus)]
    level = "ok" if machine.ram_total >= LOW_RAM_BYTES else "warn"
    ram = f"{human_bytes(machine.ram_total)} total, {human_bytes(machine.ram_available)} available"
    findings.append(Finding(level, "ram", ram))
    return findings


def _disk(models_root: Path) -> Finding:
    free = free_disk_bytes(models_root)
    level = "ok" if free >= LOW_DISK_BYTES else "warn"
    return Finding(level, "disk", f"{human_bytes(free)} free in {models_root}")


def _packages() -> list[Finding]:
    findings = []
    for name in KEY_PACKAGES:
        try:
            findings.append(Finding("ok", name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            level = "warn" if name == "bitsandbytes" else "fail"
            findings.append(Finding(level, name, "not installed"))
    return findings


def _hub() -> list[Finding]:
    token = bool(os.environ.get("HF_TOKEN"))
    if not token:
        try:
            from huggingface_hub import get_token

            token = bool(get_token())
        except Exception:
            token = False
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
    return [
        Finding("ok" if token else "warn", "hf token", "present" if token else "absent: gated models cannot be downloaded"),
        Finding("warn" if offline else "ok", "offline mode",
                "on (HF_HUB_OFFLINE): only local and built-in models" if offline else "off"),
        Finding("ok", "hub endpoint", os.environ.get("HF_ENDPOINT") or "https://huggingface.co"),
    ]


def diagnose(models_root: Path) -> list[Finding]:
    """All findings, in display order."""
    return [_python(), *_torch(), *_gpus(), _disk(models_root), *_packages(), *_hub()]
