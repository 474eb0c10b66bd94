"""Quantizing a GGUF with llama.cpp's own quantizer, through llama-cpp-python's low-level binding
(`llama_model_quantize`): no extra binary, the same code `llama-quantize` runs.

The converter (export.pipeline) writes f32/f16/bf16/q8_0; the 4- and 5-bit types that make llama.cpp fast
on a CPU are made from its f16 (or bf16) output here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from core.errors import UserError

# Quantization types offered, by their llama.cpp names (LLAMA_FTYPE_MOSTLY_<NAME>).
QUANT_TYPES = ("q4_0", "q4_1", "q4_k_m", "q5_0", "q5_k_m", "q6_k", "q8_0")
# The k-quants pack rows in blocks of 256 values; llama.cpp stores a tensor whose rows are not a multiple of that in
# a fallback type, tensor by tensor (180 of SmolLM2-135M's 272 tensors, width 576, become q5_0: slower than q4_1).
K_QUANT_BLOCK = 256
DEFAULT_K_QUANT, DEFAULT_SMALL_QUANT = "q4_k_m", "q4_1"
# What llama.cpp's HF converter writes itself; anything else is quantized from its f16/bf16 output.
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
GGUF_TYPES = tuple(dict.fromkeys(QUANT_TYPES + CONVERTER_TYPES))


def default_quant(config: dict) -> str:
    """The 4-bit type for a model (its config.json): q4_k_m, the usual balance of size and quality, when every
    matrix row fits the k-quants' blocks, else q4_1 (32-value blocks).

    Measured on SmolLM2-135M (width 576), one thread: q4_1 75-79 tokens per CPU-second against q4_k_m's 70-72
    (mostly q5_0 after fallback) and q8_0's 65-69; q4_0 reaches 85-99 but its greedy next token agrees with full
    precision at 64% of positions (q4_1 99%, q8_0 97%: that model was itself dequantized from a Q4_1 GGUF)."""
    config = config.get("text_config", config)
    widths = [config.get(key) for key in ("hidden_size", "intermediate_size", "n_embd")]
    widths = [w for w in widths if isinstance(w, int)]
    fits = widths and all(w % K_QUANT_BLOCK == 0 for w in widths)
    return DEFAULT_K_QUANT if fits else DEFAULT_SMALL_QUANT


class QuantizeError(UserError, RuntimeError):
    """llama.cpp could not quantize the GGUF; the message says which file and type."""


def require_quantizer(quant: str) -> None:
    """QuantizeError naming the setup command when llama-cpp-python (llama.cpp's quantizer) is missing."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise QuantizeError(f"A {quant} GGUF is made by llama.cpp's quantizer, which comes with llama-cpp-python: "
                            "run `./llm-installer setup --engine llama.cpp` once (it builds llama.cpp: minutes), "
                            f"or choose one of {', '.join(CONVERTER_TYPES)}.")


def quantize_gguf(source: Path, target: Path, quant: str, threads: int | None = None) -> Path:
    """Write `source` (an f32/f16/bf16 GGUF) quantized to `quant` as `target`, atomically; returns target."""
    import llama_cpp

    if quant not in QUANT_TYPES:
        raise QuantizeError(f"Unknown GGUF quantization {quant!r}; choose one of {', '.join(QUANT_TYPES)}.")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = threads or 0  # 0: llama.cpp's own choice (every core)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    logger = logging.getLogger("llama-cpp-python")  # llama.cpp prints every tensor at INFO level otherwise
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    try:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params)
        if status != 0 or not partial.is_file():
            raise QuantizeError(f"llama.cpp could not quantize {source} to {quant} (status {status}).")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
