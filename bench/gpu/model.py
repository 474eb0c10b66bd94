"""The model shapes of the GPU check, their configs and random weights, and the FLOP count behind MFU.

Shapes (from the models' own config.json files; the weights are random, nothing is downloaded):
- llama3-8b: Meta-Llama-3-8B (8,030,261,248 parameters);
- smollm2-135m: SmolLM2-135M (134,515,008 parameters, tied input/output embeddings).

FLOPs of one LoRA training step (model FLOPs, as MFU counts them; recomputation is not counted, so a run with
gradient checkpointing does more work than this):

    per example of n tokens:  n * (4 * N_mm + 6 * N_lora)  +  6 * L * H * d_head * n * (n + 1)

- N_mm: parameters of every matrix product of the forward pass, the output head included (embedding lookups
  and norms do no matrix work). The frozen base does its forward (2 * N_mm per token) and, in the backward
  pass, the gradients with respect to its inputs (2 * N_mm); it has no weight gradients, which is what LoRA
  saves over full fine-tuning's 6 * N_mm.
- N_lora: the trainable LoRA parameters (A and B of every adapted layer): forward 2, input gradients 2 and
  weight gradients 2 per parameter and token.
- attention (L layers, H query heads of d_head): causal, each example attending to itself only: query i
  meets i keys, so QK^T and AV take 2 * d_head * n (n + 1) / 2 FLOPs each per head and layer in the forward
  pass, and the backward pass twice that: 6 * L * H * d_head * n (n + 1) in all.
- The output head is counted at every position for every contender (the convention), although our engine
  computes it on the labelled positions only and the Trainer baseline on padding too: what a contender saves
  or wastes shows in its tokens/s, and MFU is comparable between contenders of the same model.

MFU = FLOPs of the measured steps / their wall time / the GPU's bf16 peak, measured in the same run with a
large matrix product (8192^3, bf16) rather than taken from a data sheet.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

SHAPES: dict[str, dict] = {
    "llama3-8b": {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                  "intermediate_size": 14336, "vocab_size": 128256, "rope_theta": 500000.0,
                  "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
    "smollm2-135m": {"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
                     "intermediate_size": 1536, "vocab_size": 49152, "rope_theta": 100000.0,
                     "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": True},
}
PARAMETERS = {"llama3-8b": 8_030_261_248, "smollm2-135m": 134_515_008}  # the real models' counts
# gpu_check.py --cpu-smoke: both shapes scaled down to a toy (plumbing only; the vocabulary holds the tokenizer's)
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 8192}


def shape_of(name: str, tiny: bool = False) -> dict:
    """The shape's config values (scaled down to TINY for a CPU smoke run)."""
    return {**SHAPES[name], **(TINY if tiny else {})}
INIT_STD = 0.02
SHARD_BYTES = 4 * 1024**3


def head_dim(shape: dict) -> int:
    return shape.get("head_dim") or shape["hidden_size"] // shape["num_attention_heads"]


def layer_linears(shape: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer of one decoder layer."""
    h, i, d = shape["hidden_size"], shape["intermediate_size"], head_dim(shape)
    q, kv = shape["num_attention_heads"] * d, shape["num_key_value_heads"] * d
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def matmul_parameters(shape: dict) -> int:
    """N_mm: parameters used in matrix products per token (every decoder linear layer plus the output head)."""
    per_layer = sum(a * b for a, b in layer_linears(shape).values())
    return shape["num_hidden_layers"] * per_layer + shape["hidden_size"] * shape["vocab_size"]


def total_parameters(shape: dict) -> int:
    """All parameters: N_mm, the input embedding unless tied to the head, and the RMSNorm weights."""
    h, layers = shape["hidden_size"], shape["num_hidden_layers"]
    embedding = 0 if shape["tie_word_embeddings"] else h * shape["vocab_size"]
    return matmul_parameters(shape) + embedding + (2 * layers + 1) * h


def lora_parameters(shape: dict, rank: int, targets: tuple[str, ...] | None = None) -> int:
    """N_lora: rank x (in + out) for every adapted layer (default: every linear layer of the decoder, as PEFT's
    'all-linear', which leaves the output head alone)."""
    linears = layer_linears(shape)
    chosen = linears if targets is None else {k: v for k, v in linears.items() if k in targets}
    return shape["num_hidden_layers"] * sum(rank * (a + b) for a, b in chosen.values())


def example_flops(n: int, shape: dict, n_lora: int) -> int:
    """Model FLOPs of one LoRA training pass (forward and backward) over one example of n tokens (module doc)."""
    attention = 6 * shape["num_hidden_layers"] * shape["num_attention_heads"] * head_dim(shape) * n * (n + 1)
    return n * (4 * matmul_parameters(shape) + 6 * n_lora) + attention


def step_flops(lengths: list[int], shape: dict, n_lora: int) -> int:
    """Model FLOPs of a training step over examples of these token counts."""
    return sum(example_flops(n, shape, n_lora) for n in lengths)


def mfu(flops: float, seconds: float, peak_flops_per_second: float) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak; None when any input is missing or not positive."""
    if not flops or not seconds or not peak_flops_per_second or seconds <= 0 or peak_flops_per_second <= 0:
        return None
    return flops / seconds / peak_flops_per_second


def matmul_peak_flops(size: int, seconds_per_product: float) -> float:
    """FLOP/s of one size^3 matrix product that took this long (2 * size^3 multiply-adds counted as FLOPs)."""
    return 2 * size**3 / seconds_per_product


# --- configs and weights -----------------------------------------------------------------------------------


def llama_config(name: str, bos: int, eos: int, pad: int, **overrides):
    """The transformers LlamaConfig of shape `name` (overrides: a scaled-down variant for tests), with the
    tokenizer's special token ids."""
    from transformers import LlamaConfig

    values = {**SHAPES[name], **overrides}
    return LlamaConfig(**values, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, hidden_act="silu",
                       initializer_range=INIT_STD, attention_bias=False, mlp_bias=False)


def write_config(config, dest: Path) -> Path:
    """config.json (and generation_config.json) in `dest`."""
    from transformers import GenerationConfig

    dest.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(dest)
    GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                     pad_token_id=config.pad_token_id).save_pretrained(dest)
    return dest / "config.json"


def parameter_shapes(config) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter a checkpoint of this config stores, read from a model built on the
    meta device (no memory): a tied output head is the input embedding, stored once."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return [(name, tuple(p.shape)) for name, p in model.named_parameters()]  # named_parameters drops tied copies


def plan_shards(shapes: list[tuple[str, tuple[int, ...]]], bytes_per_value: int, shard_bytes: int) -> list[list[str]]:
    """Parameter names per safetensors shard, in order, each shard at most `shard_bytes` (a larger tensor alone)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes:
        nbytes = math.prod(shape) * bytes_per_value
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_random_weights(config, dest: Path, device: str = "cpu", seed: int = 0,
                         shard_bytes: int = SHARD_BYTES) -> list[Path]:
    """Random bf16 weights for `config` as safetensors shards (plus model.safetensors.index.json when there are
    several): norms 1, every other matrix N(0, 0.02), generated on `device` (the GPU: seconds for 8B) one tensor at
    a time, so no model is ever held in memory. Returns the files written."""
    import torch
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    shapes = parameter_shapes(config)
    dims = dict(shapes)
    shards = plan_shards(shapes, 2, shard_bytes)
    generator = torch.Generator(device=device).manual_seed(seed)
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total, written = {}, 0, []
    for file_name, members in zip(names, shards, strict=True):
        tensors = {}
        for name in members:
            if name.endswith("norm.weight"):
                tensor = torch.ones(dims[name], dtype=torch.bfloat16, device=device)
            else:
                tensor = torch.empty(dims[name], dtype=torch.bfloat16, device=device).normal_(
                    0.0, INIT_STD, generator=generator)
            tensors[name] = tensor.cpu()
            weight_map[name] = file_name
            total += tensor.numel() * 2
        save_file(tensors, str(dest / file_name), metadata={"format": "pt"})
        written.append(dest / file_name)
        del tensors
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        written.append(dest / "model.safetensors.index.json")
    return written
