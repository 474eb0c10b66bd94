"""Model-family handlers: per-family facts as data, one module per family."""

from .base import CHATML_TEMPLATE, PLAIN_CHAT_TEMPLATE, ModelHandler, auto_lora_rank
from .registry import all_handlers, by_name, handler_for_config, is_multimodal_dir, register

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
