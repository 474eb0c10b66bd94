"""--from-adapter: start training from an existing LoRA adapter (SFT -> DPO, or SFT continued).

The adapter is checked like the server checks one (its base model must be this one), its shape fixes
rank, alpha and targets, and its weights are read into memory before training starts, so the run may
publish its result to the very directory it started from (./lora -> ./lora, the old one kept in
lora.prev).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from training.data.sources import DataError

log = logging.getLogger("train")
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class StartAdapter:
    """An adapter to train on from: where it is, its shape and its weights (PEFT state-dict keys)."""

    path: Path
    rank: int
    alpha: int
    targets: list[str]
    weights: dict


def _resolve(path: Path, workdir: Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_absolute() and not path.exists():
        path = workdir / path  # like --resume-from: relative to the model directory as the guide writes it
    return path.resolve()


def _norm(value: str) -> str:
    return str(Path(value).expanduser().resolve()) if value.startswith(("/", "~", ".")) else value


def _check_base(path: Path, config: dict, model_path: Path, model_info: dict) -> None:
    try:
        info = json.loads((path / "adapter_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    trained_on = {v for v in (info.get("base_model"), info.get("base_model_path"),
                              config.get("base_model_name_or_path")) if v}
    installed = {v for v in (model_info.get("source"), str(model_path)) if v}
    if trained_on and not {_norm(v) for v in trained_on} & {_norm(v) for v in installed}:
        named = info.get("base_model") or config.get("base_model_name_or_path")
        raise DataError(f"--from-adapter {path} was trained on {named}, not on this model "
                        f"({model_info.get('source') or model_path}); start from an adapter of this model.")


def _load_weights(path: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    if (path / WEIGHT_FILES[0]).is_file():
        return load_file(str(path / WEIGHT_FILES[0]))
    return torch.load(path / WEIGHT_FILES[1], map_location="cpu", weights_only=True)


def read_start_adapter(cfg, workdir: Path, model_path: Path, model_info: dict) -> StartAdapter:
    """The --from-adapter adapter, checked and loaded; DataError (one sentence) when it cannot be used."""
    path = _resolve(cfg.from_adapter, workdir)
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DataError(f"--from-adapter {path}: no readable adapter_config.json there (give a LoRA adapter "
                        "directory such as ./lora).") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise DataError(f"--from-adapter {path} is a {config['peft_type']} adapter; only LoRA adapters can be trained.")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise DataError(f"--from-adapter {path} has adapter_config.json but no adapter weights.")
    _check_base(path, config, model_path, model_info)
    targets = config.get("target_modules") or []
    rank = int(config["r"])
    start = StartAdapter(path, rank, int(config.get("lora_alpha") or 2 * rank),
                         sorted([targets] if isinstance(targets, str) else targets), _load_weights(path))
    asked = {"--lora-r": (cfg.lora_r, start.rank), "--lora-alpha": (cfg.lora_alpha, start.alpha)}
    if cfg.target_modules and cfg.target_modules != "all-linear":
        asked["--target-modules"] = (sorted(t.strip() for t in cfg.target_modules.split(",") if t.strip()),
                                     start.targets)
    for flag, (given, saved) in asked.items():
        if given is not None and given != saved:
            raise DataError(f"--from-adapter {path} has {flag} {saved}, not {given}: its shape is kept, so leave "
                            f"{flag} out.")
    return start


def load_into(model, start: StartAdapter) -> None:
    """Put the adapter's weights into the freshly wrapped PEFT model; DataError if they do not fit it."""
    from peft import set_peft_model_state_dict

    try:
        result = set_peft_model_state_dict(model, start.weights)
    except RuntimeError as exc:  # a shape mismatch: same names, other model
        raise DataError(f"--from-adapter {start.path} does not fit this model: {str(exc).splitlines()[0]}") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        names = (result.unexpected_keys or missing)[:2]
        raise DataError(f"--from-adapter {start.path} does not fit this model (e.g. {', '.join(names)}).")
    log.info("Starting from the adapter in %s (rank %d, alpha %d, targets %s).", start.path, start.rank, start.alpha,
             ",".join(start.targets))


def start_adapter_for(cfg, checkpoint: Path | None, workdir: Path, model_path: Path,
                      model_info: dict) -> StartAdapter | None:
    """The adapter a fresh run starts from (None without --from-adapter, and when resuming: the
    checkpoint holds the weights, and a DPO run's reference is the adapter it started from)."""
    if cfg.from_adapter is None:
        return None
    if checkpoint is not None:
        log.info("--from-adapter: resuming from %s, which holds the weights (a DPO run keeps comparing with the "
                 "adapter it started from).", checkpoint.name)
        return None
    return read_start_adapter(cfg, workdir, model_path, model_info)
