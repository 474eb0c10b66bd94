"""Mistral and Mixtral (mixture of experts: attention projections only, experts stay frozen)."""

from handlers.base import ModelHandler
from handlers.registry import register

MISTRAL = register(
    ModelHandler(
        name="mistral",
        description="Mistral 7B and its fine-tunes",
        model_types=("mistral",),
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        max_sequence_length=8192,
    )
)

MIXTRAL = register(
    ModelHandler(
        name="mixtral",
        description="Mixtral 8x7B / 8x22B",
        model_types=("mixtral",),
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        max_sequence_length=8192,
    )
)
