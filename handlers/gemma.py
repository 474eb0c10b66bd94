"""Gemma, Gemma 2 and Gemma 3: bf16 training (their activations overflow float16)."""

from handlers.base import ModelHandler
from handlers.registry import register

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

GEMMA = register(
    ModelHandler(
        name="gemma",
        description="Gemma and Gemma 2",
        model_types=("gemma", "gemma2"),
        target_modules=ALL_PROJECTIONS,
        training_precision="bfloat16",
        max_sequence_length=8192,
    )
)

GEMMA3 = register(
    ModelHandler(
        name="gemma3",
        description="Gemma 3 (1B text-only, 4B-27B with image input)",
        model_types=("gemma3", "gemma3_text"),
        target_modules=ALL_PROJECTIONS,
        training_precision="bfloat16",
        max_sequence_length=8192,
        multimodal=True,
        vision_tower=("vision_tower",),
        # Gemma 3's projector is a bare weight matrix (mm_input_projection_weight), not a linear layer: LoRA cannot
        # adapt it, so it stays frozen; the language model's projections are adapted.
        projector=(),
        extra={"text_only_model_types": ["gemma3_text"]},
    )
)
