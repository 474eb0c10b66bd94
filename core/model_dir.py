"""One installed model's directory: its layout, model_info.json and readiness."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError

INFO_FILE = "model_info.json"
INCOMPLETE_MARKER = ".install-incomplete"
WEIGHTS_SUBDIR = "model"
DEPS_SUBDIR = ".deps"
ADAPTER_SUBDIR = "lora"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# What train.sh/start.sh are rendered from: a model_info.json without these cannot be repaired by `fix`.
REQUIRED_INFO = {"source": str, "handler": str, "defaults": dict}
REQUIRED_DEFAULTS = ("dtype", "device", "quantization")


class DamagedInstallError(UserError, ValueError):
    """model_info.json lacks what the wrappers are rendered from."""


def check_info(info: dict, path: Path) -> dict:
    """`info` when it has every key the wrappers need, else DamagedInstallError naming the first missing one."""
    for key, kind in REQUIRED_INFO.items():
        if not isinstance(info.get(key), kind):
            raise DamagedInstallError(
                f"{path} has no valid '{key}' (the file was edited or damaged); reinstall the model with "
                "`llm-installer install MODEL --force` (adapters in ./lora are kept)."
            )
    missing = [key for key in REQUIRED_DEFAULTS if not isinstance(info["defaults"].get(key), str)]
    if missing:
        raise DamagedInstallError(
            f"{path} has no defaults.{missing[0]} (the file was edited or damaged); reinstall the model with "
            "`llm-installer install MODEL --force` (adapters in ./lora are kept)."
        )
    return info


def is_weight_file(name: str) -> bool:
    """Whether a repository file holds weights."""
    return name.endswith(WEIGHT_SUFFIXES)


@dataclass
class ModelDir:
    """Paths and state of one installed model."""

    root: Path

    @property
    def weights(self) -> Path:
        return self.root / WEIGHTS_SUBDIR

    @property
    def info_path(self) -> Path:
        return self.root / INFO_FILE

    @property
    def marker(self) -> Path:
        return self.root / INCOMPLETE_MARKER

    @property
    def adapter(self) -> Path:
        return self.root / ADAPTER_SUBDIR

    @property
    def deps(self) -> Path:
        return self.root / DEPS_SUBDIR

    def read_info(self) -> dict | None:
        """model_info.json as a dict, or None when absent or unreadable."""
        try:
            return json.loads(self.info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_info(self, info: dict) -> None:
        write_json_atomic(self.info_path, info)

    def status(self) -> str:
        """'ready' only when the install finished and every recorded file is present at its size."""
        info = self.read_info()
        if self.marker.exists() or not info or not info.get("complete"):
            return "incomplete"
        for entry in info.get("files", []):
            path = self.weights / entry["path"]
            if not path.is_file() or path.stat().st_size != entry["size"]:
                return "incomplete"
        return "ready"

    def adapter_state(self) -> str:
        """'-' without an adapter, else 'yes' with its training date when known."""
        config = self.adapter / "adapter_config.json"
        if not config.is_file():
            return "-"
        try:
            info = json.loads((self.adapter / "adapter_info.json").read_text(encoding="utf-8"))
            finished = info.get("finished_at") or info.get("timings", {}).get("finished_at")
        except (OSError, ValueError):
            finished = None
        return f"yes ({finished[:16].replace('T', ' ')})" if finished else "yes"

    def disk_bytes(self) -> int:
        """Bytes on disk under the directory, hard links to one file counted once."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    stat = os.lstat(os.path.join(dirpath, name))
                except OSError:
                    continue
                key = (stat.st_dev, stat.st_ino)
                if key not in seen:
                    seen.add(key)
                    total += stat.st_size
        return total


def installed_models(models_root: Path) -> list[ModelDir]:
    """Model directories under the models directory (those with an info file or install marker)."""
    if not models_root.is_dir():
        return []
    found = []
    for child in sorted(models_root.iterdir()):
        candidate = ModelDir(child)
        if child.is_dir() and (candidate.info_path.exists() or candidate.marker.exists()):
            found.append(candidate)
    return found
