"""Where models live: --models-dir, then LLM_MODELS_DIR, then the config file, then ~/LLM/models."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from core.errors import UserError

DEFAULT_MODELS_DIR = Path("~/LLM/models")
MODELS_DIR_ENV = "LLM_MODELS_DIR"
CONFIG_ENV = "LLM_INSTALLER_CONFIG"
CACHE_ENV = "LLM_INSTALLER_CACHE"
INSTALLER_HOME = Path(__file__).resolve().parent.parent
# Install-time defaults that train.sh and start.sh honour (and start.sh's flags accept).
QUANTIZATIONS = ("none", "8bit", "4bit")
DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda", "mps")


class SettingsError(UserError, ValueError):
    """A config file or directory name the user must fix."""


def config_path() -> Path:
    """The config file: $LLM_INSTALLER_CONFIG, else $XDG_CONFIG_HOME/llm-installer/config.json."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or "~/.config").expanduser()
    return base / "llm-installer" / "config.json"


def cache_dir() -> Path:
    """Downloads kept between runs: $LLM_INSTALLER_CACHE, else $XDG_CACHE_HOME/llm-installer, else ~/.cache/llm-installer."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "llm-installer"


def read_config() -> dict:
    """The config file's settings ({} when there is none)."""
    path = config_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SettingsError(f"Cannot read config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"Config file {path} must hold a JSON object.")
    return data


def models_dir(option: str | os.PathLike | None = None) -> Path:
    """The models directory, by precedence: option, environment, config file, default."""
    chosen = option or os.environ.get(MODELS_DIR_ENV) or read_config().get("models_dir") or DEFAULT_MODELS_DIR
    return Path(chosen).expanduser().resolve()


NAME_MAX_BYTES = 255  # one path component on Linux, macOS and Windows filesystems


def directory_name(model: str) -> str:
    """Directory name for a model source: org/name -> org_name, builtin:x -> builtin_x,
    ollama:name:tag -> ollama_name_tag, a directory or .gguf file -> its name (without .gguf)."""
    expanded = os.path.expanduser(model)
    if model.startswith(("builtin:", "ollama:")):
        name = re.sub(r"[:/]", "_", model)
    elif os.path.isdir(expanded):
        name = Path(expanded).resolve().name
    elif os.path.isfile(expanded):
        name = Path(expanded).name.removesuffix(".gguf").removesuffix(".GGUF")
    else:
        name = model.replace("/", "_")
    return validate_name(name)


def validate_name(name: str) -> str:
    """A model directory name: one path component of safe characters, short enough for the filesystem."""
    if len((name or "").encode()) > NAME_MAX_BYTES:
        raise SettingsError(
            f"Model name '{name[:40]}...' is {len(name)} characters long; the filesystem allows {NAME_MAX_BYTES} "
            "(choose a shorter one with --name)."
        )
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name or "") or name in {".", ".."}:
        raise SettingsError(
            f"Invalid model name {name!r}: use letters, digits, '.', '_', '+' or '-', starting with a letter or digit."
        )
    return name
