"""LLaVA 1.5-style models: a CLIP/SigLIP vision tower, a two-layer MLP projector, a Llama/Mistral/Qwen decoder."""

from handlers.base import ModelHandler
from handlers.registry import register

LLAVA = register(
    ModelHandler(
        name="llava",
        description="LLaVA 1.5 and compatible image-text models (vision tower + MLP projector + decoder)",
        model_types=("llava",),
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        training_precision="bfloat16",
        max_sequence_length=4096,
        multimodal=True,
        vision_tower=("vision_tower",),
        projector=("multi_modal_projector.linear_1", "multi_modal_projector.linear_2"),
    )
)
