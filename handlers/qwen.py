"""Qwen2, Qwen2.5 and Qwen3 (DeepSeek-R1-Distill-Qwen reports model_type qwen2)."""

from handlers.base import ModelHandler
from handlers.registry import register

QWEN = register(
    ModelHandler(
        name="qwen",
        description="Qwen2, Qwen2.5, Qwen3, DeepSeek-R1-Distill-Qwen",
        model_types=("qwen2", "qwen3"),
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        training_precision="bfloat16",
        max_sequence_length=8192,
    )
)
