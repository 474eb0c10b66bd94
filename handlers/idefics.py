"""Idefics3 and SmolVLM: a SigLIP vision model, a pixel-shuffle connector with one linear projection, and a
Llama-style decoder."""

from handlers.base import ModelHandler
from handlers.registry import register

IDEFICS = register(
    ModelHandler(
        name="idefics",
        description="Idefics3 and SmolVLM (image input)",
        model_types=("idefics3", "smolvlm"),
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        training_precision="bfloat16",
        max_sequence_length=8192,
        multimodal=True,
        vision_tower=("vision_model",),
        projector=("connector.modality_projection.proj",),
    )
)
