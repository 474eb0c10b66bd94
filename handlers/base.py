"""The ModelHandler record: every per-family fact the installer, trainer and server need."""

from __future__ import annotations

from dataclasses import dataclass, field

from handlers.chat_templates import CHATML_TEMPLATE

# Parameter-count thresholds (exclusive upper bounds) for the automatic LoRA rank.
RANK_BY_SIZE: tuple[tuple[float, int], ...] = (
    (1e9, 8),
    (3e9, 16),
    (7e9, 32),
    (13e9, 64),
    (30e9, 128),
)
LARGEST_RANK = 256

# Models below this size are toy/test models (a few million parameters, often barely trained):
# attention-only LoRA at 2e-4 barely moves them, so they adapt every linear layer with a
# 15x learning rate. Real checkpoints (>= 50M) keep the usual recipe.
SMALL_MODEL_PARAMETERS = 5e7
DEFAULT_LEARNING_RATE = 2e-4
SMALL_MODEL_LEARNING_RATE = 3e-3

VALID_PRECISIONS = ("float16", "bfloat16", "float32")
VALID_QUANTIZATION = ("8bit", "4bit")


def is_small_model(parameters: int) -> bool:
    """True for toy/test-size models (< 50M parameters), which train with the small-model recipe."""
    return 0 < parameters < SMALL_MODEL_PARAMETERS


def auto_learning_rate(parameters: int) -> float:
    """Base LoRA learning rate from model size: 3e-3 below 50M parameters, else 2e-4."""
    return SMALL_MODEL_LEARNING_RATE if is_small_model(parameters) else DEFAULT_LEARNING_RATE


def auto_lora_rank(parameters: int) -> int:
    """LoRA rank from model size: <1B 8, 1-3B 16, 3-7B 32, 7-13B 64, 13-30B 128, >30B 256."""
    for upper, rank in RANK_BY_SIZE:
        if parameters < upper:
            return rank
    return LARGEST_RANK


@dataclass(frozen=True)
class ModelHandler:
    """Per-family facts. One instance per family, registered in `handlers.registry`."""

    name: str
    model_types: tuple[str, ...]
    target_modules: tuple[str, ...]
    description: str = ""
    architectures: tuple[str, ...] = ()
    training_precision: str = "bfloat16"  # float16 where the GPU lacks bf16 (training.modeling)
    max_sequence_length: int = 4096
    gradient_checkpointing: bool = True
    flash_attention: bool = True
    quantization: tuple[str, ...] = VALID_QUANTIZATION
    extra_requirements: tuple[str, ...] = ()
    trust_remote_code: bool = False
    chat_template_fallback: str = CHATML_TEMPLATE
    multimodal: bool = False
    # Multimodal families: module-path fragments of the vision encoder (frozen unless --train-vision-tower) and the
    # projector's linear layers (suffixes of their module paths), adapted with the language model by default.
    vision_tower: tuple[str, ...] = ()
    projector: tuple[str, ...] = ()
    # Discover linear layers at load time instead of trusting `target_modules`.
    discover_targets: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not self.name:
            problems.append("name is empty")
        if not self.model_types:
            problems.append("model_types is empty")
        if not self.target_modules and not self.discover_targets:
            problems.append("target_modules is empty")
        if self.training_precision not in VALID_PRECISIONS:
            problems.append(f"training_precision {self.training_precision!r} not in {VALID_PRECISIONS}")
        if self.max_sequence_length <= 0:
            problems.append("max_sequence_length must be positive")
        bad_quant = set(self.quantization) - set(VALID_QUANTIZATION)
        if bad_quant:
            problems.append(f"unknown quantization {sorted(bad_quant)}")
        if self.multimodal and not self.vision_tower:
            problems.append("a multimodal handler must name its vision tower")
        if problems:
            raise ValueError(f"handler {self.name or '?'}: " + "; ".join(problems))

    def is_multimodal(self, config: dict) -> bool:
        """Whether a checkpoint with this config.json reads images (text-only variants of a family do not)."""
        text_only = self.extra.get("text_only_model_types", ())
        return self.multimodal and config.get("model_type") not in text_only and "vision_config" in config

    def lora_rank(self, parameters: int) -> int:
        """Automatic LoRA rank for a model of this many parameters."""
        return auto_lora_rank(parameters)

    def learning_rate(self, parameters: int) -> float:
        """Automatic base learning rate (before the mode's multiplier) for a model of this size."""
        return auto_learning_rate(parameters)

    def default_targets(self, parameters: int) -> list[str] | str:
        """Default LoRA targets: 'all-linear' for discovered/small models, else the family's modules."""
        if self.discover_targets or is_small_model(parameters):
            return "all-linear"
        return list(self.target_modules) + list(self.projector)

    def lora_alpha(self, parameters: int) -> int:
        """Automatic LoRA alpha: twice the rank."""
        return 2 * self.lora_rank(parameters)

    def precision_for(self, device: str) -> str:
        """Training precision on a device: the family's choice on GPUs, float32 on CPU/MPS."""
        if device != "cuda":
            return "float32"
        return self.training_precision

    def as_dict(self) -> dict:
        """Facts for `check --json` and model_info.json."""
        return {
            "handler": self.name,
            "target_modules": list(self.target_modules),
            "training_precision": self.training_precision,
            "max_sequence_length": self.max_sequence_length,
            "gradient_checkpointing": self.gradient_checkpointing,
            "flash_attention": self.flash_attention,
            "quantization": list(self.quantization),
            "extra_requirements": list(self.extra_requirements),
            "trust_remote_code": self.trust_remote_code,
            "multimodal": self.multimodal,
            "vision_tower": list(self.vision_tower),
            "projector": list(self.projector),
        }
