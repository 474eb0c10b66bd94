"""What travels to the GPU machine with the check: the wheels it carries (by group, each installed into its own
folder for the parts that need it), how to download them, and the size of one device call against its limit."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEELS = ROOT / ".whl" / "gpu_check"
TRAVEL_LIMIT = 64 * 1024**2  # what one device call carries: the working tree and the wheels

# Wheels that travel, by group: each group is installed into its own folder and put on the path of the parts
# that need it only (so the plain LoRA runs see neither Liger nor bitsandbytes). Versions: those this repository
# is tested with (.venv); the GPU machine's python is 3.12 (x86-64).
WHEEL_SPECS: dict[str, tuple[str, ...]] = {
    "bnb": ("bitsandbytes==0.50.2",),
    "liger": ("liger-kernel==0.8.5",),
    "serve": ("fastapi==0.165.0", "starlette==1.10.0", "pydantic==2.14.4", "pydantic-core==2.50.5",
              "annotated-types==0.8.0", "typing-inspection==0.4.5", "typing-extensions==4.16.0", "anyio==4.16.0",
              "annotated-doc==0.0.7", "opentelemetry-api==1.45.3", "uvicorn==0.55.0"),
}
GROUP_MODULES = {"bnb": ("bitsandbytes",), "liger": ("liger_kernel",), "serve": ("fastapi", "uvicorn", "pydantic")}
WHEEL_PACKAGE = {"bnb": "bitsandbytes", "liger": "liger-kernel", "serve": "fastapi, uvicorn and pydantic"}
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
DEVICE_COMMAND = "PYTHONUNBUFFERED=1 bash bench/gpu_check.sh"
DEVICE_CARRY = [".whl/gpu_check"]
DEVICE_TIMEOUT = 600


def wheel_files(wheels: Path, group: str) -> list[Path]:
    folder = wheels / group
    return sorted(folder.glob("*.whl")) if folder.is_dir() else []


def importable(group: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in GROUP_MODULES[group])


def travel_bytes() -> int | None:
    """Bytes of the working tree that a device call sends (tracked and untracked-not-ignored files), or None."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0
    for name in filter(None, listed.decode(errors="replace").split("\0")):
        path = ROOT / name
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def device_invocation() -> str:
    return (f"device run: command={DEVICE_COMMAND!r}, carry={json.dumps(DEVICE_CARRY)}, "
            f"timeout_s={DEVICE_TIMEOUT}")


def fetch_wheels(wheels: Path, groups: list[str] | None = None) -> int:
    """Download the wheels that travel (for the GPU machine's python and platform) into wheels/GROUP."""
    status = 0
    for group, specs in WHEEL_SPECS.items():
        if groups and group not in groups:
            continue
        target = wheels / group
        target.mkdir(parents=True, exist_ok=True)
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               PYTHON_VERSION, "--implementation", "cp", *platforms, "-d", str(target), *specs]
        print("$ " + " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"gpu_check: downloading the {group} wheels failed (see pip's message above).", file=sys.stderr)
            status = 1
        files = wheel_files(wheels, group)
        print(f"{group}: {len(files)} wheel(s), {sum(f.stat().st_size for f in files) / 1024**2:.1f} MiB in {target}")
    return status
