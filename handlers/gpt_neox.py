"""GPT-NeoX family: Pythia, GPT-NeoX-20B, Dolly v2."""

from handlers.base import ModelHandler
from handlers.chat_templates import PLAIN_CHAT_TEMPLATE
from handlers.registry import register

GPT_NEOX = register(
    ModelHandler(
        name="gpt_neox",
        description="Pythia, GPT-NeoX-20B, Dolly v2",
        model_types=("gpt_neox",),
        target_modules=("query_key_value", "dense"),
        max_sequence_length=2048,
        chat_template_fallback=PLAIN_CHAT_TEMPLATE,
    )
)
