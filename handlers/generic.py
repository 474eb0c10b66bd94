"""Fallback for unknown architectures: LoRA targets are the model's own linear layers,
discovered when the model is loaded (see `discover_linear_targets`)."""

import sys

from handlers.base import ModelHandler
from handlers.registry import GENERIC_NAME, register

# Output heads and routers are never adapted: they change the vocabulary/routing contract.
EXCLUDED_LEAF_NAMES = ("lm_head", "embed_out", "output", "score", "classifier", "gate", "router")

GENERIC = register(
    ModelHandler(
        name=GENERIC_NAME,
        description="any other architecture (linear layers discovered at load time)",
        model_types=("generic",),
        target_modules=(),
        discover_targets=True,
        quantization=("8bit", "4bit"),
    )
)


def discover_linear_targets(model) -> list[str]:
    """Leaf names of the linear layers of a loaded model, excluding heads and routers."""
    import torch

    linear_types = [torch.nn.Linear]
    try:
        from transformers.pytorch_utils import Conv1D

        linear_types.append(Conv1D)
    except ImportError:  # pragma: no cover - very old transformers
        pass
    # A quantized model has loaded bitsandbytes already; importing it only to look costs a second on the CPU.
    bnb = sys.modules.get("bitsandbytes")
    if bnb is not None:
        linear_types += [bnb.nn.Linear4bit, bnb.nn.Linear8bitLt]
    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, tuple(linear_types)):
            leaf = full_name.rsplit(".", 1)[-1]
            if leaf not in EXCLUDED_LEAF_NAMES and not leaf.isdigit():
                names.add(leaf)
    return sorted(names)
