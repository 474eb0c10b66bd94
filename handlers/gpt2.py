"""GPT-2 (Conv1D layers: bitsandbytes cannot quantize them)."""

from handlers.base import ModelHandler
from handlers.chat_templates import PLAIN_CHAT_TEMPLATE
from handlers.registry import register

GPT2 = register(
    ModelHandler(
        name="gpt2",
        description="GPT-2 and DistilGPT-2",
        model_types=("gpt2",),
        target_modules=("c_attn", "c_proj"),
        max_sequence_length=1024,
        flash_attention=False,
        quantization=(),
        chat_template_fallback=PLAIN_CHAT_TEMPLATE,
    )
)
