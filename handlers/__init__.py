"""Model-family handlers: per-family facts as data, one module per family."""

from handlers.base import ModelHandler, auto_lora_rank
from handlers.chat_templates import CHATML_TEMPLATE, PLAIN_CHAT_TEMPLATE
from handlers.registry import all_handlers, by_name, handler_for_config, is_multimodal_dir, register

__all__ = [
    "CHATML_TEMPLATE",
    "PLAIN_CHAT_TEMPLATE",
    "ModelHandler",
    "all_handlers",
    "auto_lora_rank",
    "by_name",
    "handler_for_config",
    "is_multimodal_dir",
    "register",
]
