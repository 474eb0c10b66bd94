"""Qwen2-VL and Qwen2.5-VL: a ViT (`visual.blocks`) whose patch merger (`visual.merger`) is the projector,
and a Qwen2 decoder with multimodal rotary positions (computed by the model, never packed)."""

from handlers.base import ModelHandler
from handlers.registry import register

QWEN_VL = register(
    ModelHandler(
        name="qwen_vl",
        description="Qwen2-VL and Qwen2.5-VL (image input)",
        model_types=("qwen2_vl", "qwen2_5_vl"),
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        training_precision="bfloat16",
        max_sequence_length=8192,
        multimodal=True,
        vision_tower=("visual.blocks", "visual.patch_embed"),
        projector=("visual.merger.mlp.0", "visual.merger.mlp.2"),
    )
)
