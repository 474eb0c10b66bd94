"""Which adapter to serve, and proof that it belongs to the installed base model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError


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
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{path} is unreadable: {exc}.") from exc


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
    installed = {model_info.get("source", ""), str(model_dir / "model")}
    trained_on = {info.get("base_model", ""), info.get("base_model_path", ""),
                  config.get("base_model_name_or_path") or ""}
    if any(trained_on) and not _same_base(trained_on, installed):
        named = info.get("base_model") or config.get("base_model_name_or_path") or "an unknown model"
        raise AdapterError(f"The adapter in {path} was trained on {named}, not on this model "
                           f"({model_info.get('source') or model_dir}); serve it with that model, or use --no-lora.")
    template_file = path / "chat_template.jinja"
    return AdapterInfo(
        path=path, rank=int(config.get("r", 0)), alpha=int(config.get("lora_alpha", 0)),
        base_model=info.get("base_model") or config.get("base_model_name_or_path") or "?",
        target_modules=sorted(config.get("target_modules") or []),
        chat_template=template_file.read_text(encoding="utf-8") if template_file.is_file() else None,
        trained_at=info.get("finished_at"), stop_reason=info.get("stop_reason"))
