"""Which adapter to serve, and proof that it belongs to the installed base model."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.quoting import brief


class AdapterError(UserError, ValueError):
    """The adapter cannot be served; the message says why."""


@dataclass
class AdapterInfo:
    """What the server says about the adapter it loaded."""

    path: Path
    rank: int
    alpha: int
    base_model: str
    target_modules: list[str]
    chat_template: str | None
    trained_at: str | None = None
    stop_reason: str | None = None

    def describe(self) -> str:
        parts = [f"{self.path}", f"rank {self.rank}", f"alpha {self.alpha}", f"base model {self.base_model}"]
        if self.trained_at:
            parts.append(f"trained {self.trained_at}")
        return ", ".join(parts)


def _read_json(path: Path) -> dict:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError) as exc:
        raise AdapterError(f"{path} is unreadable: {brief(str(exc), 200)}.") from exc
    if not isinstance(found, dict):
        raise AdapterError(f"{path} must hold a JSON object, not {brief(found)}.")
    return found


def _whole(config: dict, key: str, path: Path) -> int:
    """config[key] as a whole number (0 when absent); AdapterError naming the file for anything else."""
    value = config.get(key, 0)
    if isinstance(value, float) and math.isfinite(value):
        value = int(value)  # what int() always did with a fractional alpha
    if type(value) is not int or value < 0:
        raise AdapterError(f"{path / 'adapter_config.json'}: '{key}' must be a whole number, not {brief(value)}.")
    return value


def _modules(config: dict, path: Path) -> list[str]:
    """target_modules as a list of names (PEFT also accepts one regular expression as text)."""
    value = config.get("target_modules") or []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise AdapterError(f"{path / 'adapter_config.json'}: 'target_modules' must be a list of module names, not "
                           f"{brief(value)}.")
    return sorted(value)


def _texts(*values) -> set[str]:
    """The values that are non-empty text (a hostile file may put numbers or lists where names go)."""
    return {value for value in values if _text(value)}


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _same_base(trained_on: set[str], installed: set[str]) -> bool:
    def norm(value: str) -> str:
        return str(Path(value).expanduser().resolve()) if value.startswith(("/", "~", ".")) else value

    return bool({norm(v) for v in trained_on if v} & {norm(v) for v in installed if v})


def choose_adapter(model_dir: Path, no_lora: bool, load_lora: Path | None) -> Path | None:
    """--load-lora, else ./lora when it holds an adapter, else None (also with --no-lora)."""
    if no_lora:
        return None
    if load_lora is not None:
        path = Path(load_lora).expanduser().resolve()
        if not (path / "adapter_config.json").is_file():
            raise AdapterError(f"--load-lora {path}: no adapter_config.json there.")
        return path
    default = model_dir / "lora"
    return default if (default / "adapter_config.json").is_file() else None


def inspect_adapter(path: Path, model_dir: Path, model_info: dict) -> AdapterInfo:
    """Adapter facts; AdapterError when it was trained on a different base model or is incomplete."""
    config = _read_json(path / "adapter_config.json")
    info = _read_json(path / "adapter_info.json")
    if not any((path / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise AdapterError(f"{path} has adapter_config.json but no adapter weights.")
    installed = _texts(model_info.get("source"), str(model_dir / "model"))
    trained_on = _texts(info.get("base_model"), info.get("base_model_path"), config.get("base_model_name_or_path"))
    named = _text(info.get("base_model")) or _text(config.get("base_model_name_or_path"))
    if trained_on and not _same_base(trained_on, installed):
        raise AdapterError(f"The adapter in {path} was trained on {named or 'an unknown model'}, not on this model "
                           f"({model_info.get('source') or model_dir}); serve it with that model, or use --no-lora.")
    template_file = path / "chat_template.jinja"
    return AdapterInfo(
        path=path, rank=_whole(config, "r", path), alpha=_whole(config, "lora_alpha", path),
        base_model=named or "?", target_modules=_modules(config, path),
        chat_template=template_file.read_text(encoding="utf-8") if template_file.is_file() else None,
        trained_at=_text(info.get("finished_at")), stop_reason=_text(info.get("stop_reason")))
