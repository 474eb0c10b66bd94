"""Llama family: TinyLlama, Llama 2, Llama 3/3.x (text) and Llama 4 (multimodal, bf16)."""

from handlers.base import ModelHandler
from handlers.registry import register

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")

LLAMA = register(
    ModelHandler(
        name="llama",
        description="TinyLlama, Llama 2, Llama 3 and 3.x",
        model_types=("llama",),
        target_modules=ATTENTION,
        training_precision="bfloat16",
        max_sequence_length=8192,
    )
)

LLAMA4 = register(
    ModelHandler(
        name="llama4",
        description="Llama 4 Scout/Maverick (mixture of experts, image input)",
        model_types=("llama4", "llama4_text"),
        target_modules=ATTENTION,
        training_precision="bfloat16",
        max_sequence_length=8192,
        multimodal=True,
        vision_tower=("vision_model",),
        projector=("multi_modal_projector.linear_1",),
    )
)
