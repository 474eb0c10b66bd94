"""Parameter count, native dtype and the memory table shown by `check`."""

from __future__ import annotations

from dataclasses import dataclass

from sources.base import ModelMetadata

SAFETENSORS_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn"}
# Bytes per parameter of each way to hold the weights.
INFERENCE_BYTES = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}
# Activations, KV cache and CUDA context on top of the weights at inference.
INFERENCE_OVERHEAD = 1.2
# LoRA: bf16 weights, plus activations/grads through them and the adapters' optimizer state.
LORA_TRAINING_FACTOR = 2.0 * 1.5
# QLoRA: 4-bit weights (with their quantization constants) plus the same extras.
QLORA_TRAINING_FACTOR = 0.55 * 1.5
FIXED_OVERHEAD_BYTES = 512 * 1024**2


def _text_config(config: dict) -> dict:
    return config.get("text_config") or config


def parameters_from_config(config: dict, trust_remote_code: bool = False) -> int | None:
    """Exact parameter count by building the model on the meta device (no memory, no weights)."""
    try:
        import torch
        import transformers

        model_type = config.get("model_type")
        if not model_type:
            return _analytic_parameters(config)
        kwargs = {k: v for k, v in config.items() if k != "model_type"}
        cfg = transformers.AutoConfig.for_model(model_type, **kwargs)
        with torch.device("meta"):
            model = _model_from_config(transformers, cfg, trust_remote_code)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # unknown or remote-code architectures: fall back to arithmetic
        return _analytic_parameters(config)


def _model_from_config(transformers, cfg, trust_remote_code: bool):
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModelForImageTextToText, transformers.AutoModel):
        try:
            return auto.from_config(cfg, trust_remote_code=trust_remote_code)
        except ValueError:
            continue
    raise ValueError("no auto class fits this config")


def _analytic_parameters(config: dict) -> int | None:
    """Decoder-only estimate from the usual config keys (used when transformers cannot build it)."""
    c = _text_config(config)
    hidden = c.get("hidden_size") or c.get("n_embd") or c.get("d_model")
    layers = c.get("num_hidden_layers") or c.get("n_layer") or c.get("num_layers")
    vocab = c.get("vocab_size")
    if not (hidden and layers and vocab):
        return None
    heads = c.get("num_attention_heads") or c.get("n_head") or 1
    kv_heads = c.get("num_key_value_heads") or heads
    head_dim = c.get("head_dim") or hidden // heads
    intermediate = c.get("intermediate_size") or c.get("n_inner") or 4 * hidden
    experts = c.get("num_local_experts") or c.get("num_experts") or 1
    attention = hidden * head_dim * (heads * 2 + kv_heads * 2)
    mlp = 3 * hidden * intermediate * experts
    embeddings = vocab * hidden * (1 if c.get("tie_word_embeddings", True) else 2)
    return int(layers * (attention + mlp + 2 * hidden) + embeddings + hidden)


def parameter_count(meta: ModelMetadata, trust_remote_code: bool = False) -> tuple[int | None, str]:
    """(count, where it came from): safetensors headers, else a GGUF header, else the config."""
    if meta.safetensors_parameters:
        return meta.safetensors_parameters, "safetensors metadata"
    if meta.gguf is not None:
        return meta.gguf.parameters, "GGUF header"
    return parameters_from_config(meta.config, trust_remote_code), "config.json"


def native_dtype(meta: ModelMetadata) -> str:
    """The dtype the weights are stored in."""
    config_dtype = meta.config.get("torch_dtype") or meta.config.get("dtype") or _text_config(meta.config).get("dtype")
    if isinstance(config_dtype, str) and config_dtype != "auto":
        return config_dtype
    if meta.safetensors_dtypes:
        main = max(meta.safetensors_dtypes, key=meta.safetensors_dtypes.get)
        return SAFETENSORS_DTYPE_NAMES.get(main, main.lower())
    return "float32"


@dataclass
class MemoryRow:
    """One line of the memory table."""

    name: str
    bytes: int
    fits: bool


def memory_table(parameters: int, available_bytes: int) -> list[MemoryRow]:
    """Estimated memory for inference at each precision and for LoRA/QLoRA training."""
    rows = [
        (f"inference_{name}", parameters * per_param * INFERENCE_OVERHEAD)
        for name, per_param in INFERENCE_BYTES.items()
    ]
    rows.append(("lora_training", parameters * LORA_TRAINING_FACTOR))
    rows.append(("qlora_training", parameters * QLORA_TRAINING_FACTOR))
    return [
        MemoryRow(name, int(size + FIXED_OVERHEAD_BYTES), int(size + FIXED_OVERHEAD_BYTES) <= available_bytes)
        for name, size in rows
    ]
