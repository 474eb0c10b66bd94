"""Loading the base model and tokenizer for training, and wrapping the model with LoRA."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.system import resolve_device
from handlers import ModelHandler
from handlers.generic import discover_linear_targets

log = logging.getLogger("train")


class ModelLoadError(UserError, RuntimeError):
    """The model cannot be trained as asked; the message says why."""


@dataclass
class Placement:
    """Where and in what precision training runs."""

    device: str
    precision: str  # float32, float16 or bfloat16 (autocast)


def choose_placement(requested: str, handler: ModelHandler) -> Placement:
    """The device (cuda > mps > cpu unless given) and the handler's precision for it."""
    import torch

    try:
        device = resolve_device(requested)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    precision = handler.precision_for(device)
    if precision == "bfloat16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        precision = "float16"
    return Placement(device, precision)


def load_tokenizer(model_path: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _quantization_config(method: str, use_8bit: bool, placement: Placement, handler: ModelHandler):
    if method != "qlora" and not use_8bit:
        return None
    wanted = "4bit" if method == "qlora" else "8bit"
    if placement.device != "cuda":
        raise ModelLoadError(f"{'QLoRA' if wanted == '4bit' else '8-bit'} training needs a CUDA GPU "
                             "(bitsandbytes); this machine trains on the CPU.")
    if wanted not in handler.quantization:
        raise ModelLoadError(f"The {handler.name} handler does not support {wanted} quantization.")
    import torch
    from transformers import BitsAndBytesConfig

    if wanted == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, placement.precision if placement.precision !=
                                                             "float32" else "float16"))


def load_base_model(model_path: Path, placement: Placement, handler: ModelHandler, method: str, use_8bit: bool,
                    trust_remote_code: bool = False, device=None):
    """The frozen base model on `device` (this process's, default the placement's), quantized for QLoRA / 8-bit."""
    import json

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    model_class = AutoModelForImageTextToText if handler.is_multimodal(config) else AutoModelForCausalLM
    quantization = _quantization_config(method, use_8bit, placement, handler)
    # Full-precision weights on CPU; half precision master weights on GPU (LoRA params are upcast below).
    dtype = torch.float32 if placement.device != "cuda" else getattr(torch, placement.precision)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if quantization is not None:
        index = getattr(device, "index", None) or 0
        kwargs.update(quantization_config=quantization, device_map={"": index})
    model = model_class.from_pretrained(str(model_path), **kwargs)
    if quantization is None:
        model.to(device if device is not None else placement.device)
    model.config.use_cache = False
    return model


def resolve_targets(model, handler: ModelHandler, requested: str | None, parameters: int) -> list[str]:
    """LoRA target modules: the flag, else the handler's default for this model size ('all-linear' discovers)."""
    if requested:
        targets = "all-linear" if requested == "all-linear" else [t.strip() for t in requested.split(",") if t.strip()]
    else:
        targets = handler.default_targets(parameters)
    if targets == "all-linear":
        return discover_linear_targets(model)
    names = [name for name, _ in model.named_modules()]
    present = {name.rsplit(".", 1)[-1] for name in names}
    # a target is a leaf name (q_proj) or a path suffix (multi_modal_projector.linear_1), as PEFT matches them
    missing = [t for t in targets if t not in present and not any(name.endswith("." + t) for name in names)]
    if missing:
        raise ModelLoadError(f"Target module(s) {', '.join(missing)} do not exist in this model; "
                             f"linear layers are: {', '.join(discover_linear_targets(model))}.")
    return targets


def wrap_with_lora(model, targets, rank: int, alpha: int, dropout: float, quantized: bool, gradient_checkpointing: bool,
                   exclude: str | None = None):
    """A PEFT model whose only trainable parameters are the LoRA matrices (kept in float32); `exclude`: a pattern
    of module paths left alone (a multimodal model's vision tower)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                        task_type="CAUSAL_LM", exclude_modules=exclude)
    model = get_peft_model(model, config)
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return model
