"""Microsoft Phi (phi-1/1.5/2) and Phi-3/3.5/4 (fused qkv and gate_up projections)."""

from handlers.base import ModelHandler
from handlers.registry import register

PHI = register(
    ModelHandler(
        name="phi",
        description="Phi-1, Phi-1.5, Phi-2",
        model_types=("phi",),
        target_modules=("q_proj", "k_proj", "v_proj", "dense"),
        max_sequence_length=2048,
    )
)

PHI3 = register(
    ModelHandler(
        name="phi3",
        description="Phi-3, Phi-3.5, Phi-4",
        model_types=("phi3",),
        target_modules=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
        training_precision="bfloat16",
        max_sequence_length=4096,
    )
)
