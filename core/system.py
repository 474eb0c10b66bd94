"""Facts about this machine: accelerators, memory, disk."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Accelerator:
    """One GPU."""

    name: str
    total_bytes: int


@dataclass
class MachineInfo:
    """What memory a model can use here."""

    ram_total: int
    ram_available: int
    gpus: list[Accelerator] = field(default_factory=list)
    mps: bool = False

    @property
    def budget_bytes(self) -> int:
        """Memory a model can occupy: the largest GPU when there is one, else RAM."""
        if self.gpus:
            return max(g.total_bytes for g in self.gpus)
        return self.ram_total

    @property
    def budget_name(self) -> str:
        return f"GPU memory ({self.gpus[0].name})" if self.gpus else "RAM"


def machine_info(probe_torch: bool = True) -> MachineInfo:
    """RAM from psutil; GPUs from torch when it is importable."""
    import psutil

    memory = psutil.virtual_memory()
    info = MachineInfo(ram_total=memory.total, ram_available=memory.available)
    if probe_torch:
        try:
            import torch

            if torch.cuda.is_available():
                for index in range(torch.cuda.device_count()):
                    props = torch.cuda.get_device_properties(index)
                    info.gpus.append(Accelerator(props.name, props.total_memory))
            info.mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        except ImportError:
            pass
    return info


def resolve_device(requested: str) -> str:
    """The device to run on: 'auto' picks cuda > mps > cpu; ValueError when CUDA is asked for but absent."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA GPU.")
    return requested


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free
