"""Automatic batch size: how many packed rows fit in the memory left after the model is loaded."""

from __future__ import annotations

from dataclasses import dataclass

# Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"): a transformer
# layer keeps about 34 * hidden bytes of 16-bit activations per token for the backward pass (attention scores
# excluded: SDPA/flash kernels do not materialise them). With gradient checkpointing only the layer input
# (2 * hidden bytes) is kept, plus one layer recomputed in full.
ACTIVATION_BYTES_PER_HIDDEN = 34
CHECKPOINTED_BYTES_PER_HIDDEN = 2
LOGIT_COPIES = 3  # float32 logits, their log-softmax and its gradient
MEMORY_FRACTION = {"cuda": 0.6, "cpu": 0.3}
MAX_ROWS = {"cuda": 16, "cpu": 4}  # on CPU larger batches cost memory without speeding anything up


@dataclass
class BatchChoice:
    """Rows per step and the reason, for the log."""

    rows: int
    reason: str


def activation_bytes_per_token(model_config: dict, precision: str, checkpointing: bool) -> int:
    """Estimated training memory per token of a batch (activations and logits), in bytes."""
    hidden = model_config.get("hidden_size") or model_config.get("n_embd") or model_config.get("d_model") or 1024
    layers = model_config.get("num_hidden_layers") or model_config.get("n_layer") or 12
    vocab = model_config.get("vocab_size") or 32000
    width = 2 if precision == "float32" else 1  # the constants above are for 16-bit activations
    per_layer = (CHECKPOINTED_BYTES_PER_HIDDEN if checkpointing else ACTIVATION_BYTES_PER_HIDDEN) * hidden * width
    recomputed = ACTIVATION_BYTES_PER_HIDDEN * hidden * width if checkpointing else 0
    return layers * per_layer + recomputed + LOGIT_COPIES * 4 * vocab


def free_memory(device: str) -> int | None:
    """Bytes free for training on `device` now (None when it cannot be measured, e.g. MPS)."""
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free)
    if device == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    return None


def auto_batch_rows(model_config: dict, row_length: int, device: str, precision: str, checkpointing: bool,
                    free_bytes: int | None) -> BatchChoice:
    """The largest batch (in packed rows of `row_length` tokens) whose activations fit in a share of free memory."""
    cap = MAX_ROWS.get(device, 4)
    if free_bytes is None:
        return BatchChoice(cap, f"{device} memory cannot be measured: the default of {cap}")
    per_row = activation_bytes_per_token(model_config, precision, checkpointing) * max(1, row_length)
    budget = MEMORY_FRACTION.get(device, 0.3) * free_bytes
    rows = max(1, min(cap, int(budget // per_row)))
    return BatchChoice(rows, f"~{_size(per_row)} of activations per row, {_size(free_bytes)} free on {device}")


def _size(count: float) -> str:
    return f"{count / 1024 ** 3:.1f} GiB" if count >= 1024 ** 3 else f"{count / 1024 ** 2:.1f} MiB"
