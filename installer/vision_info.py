"""What `check` and `install` say about a multimodal model: its vision tower and projector, counted from the
config alone (the model is built on the meta device: no weights are read or downloaded)."""

from __future__ import annotations

import re

from core.units import human_count


def _meta_model(config: dict, trust_remote_code: bool):
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForImageTextToText

    settings = AutoConfig.for_model(**config) if "auto_map" not in config else None
    if settings is None:
        return None
    with init_empty_weights():
        return AutoModelForImageTextToText.from_config(settings, trust_remote_code=trust_remote_code)


def vision_summary(config: dict, handler, trust_remote_code: bool = False) -> dict | None:
    """{"vision_tower_parameters", "projector_parameters", ...} for an image-text checkpoint, None for a text
    model; counts are None when the architecture cannot be built from its config here."""
    if not handler.is_multimodal(config):
        return None
    summary = {"vision_tower": list(handler.vision_tower), "projector": list(handler.projector),
               "vision_tower_parameters": None, "projector_parameters": None,
               "vision_tower_trained": "only with --train-vision-tower"}
    try:
        model = _meta_model(config, trust_remote_code)
    except Exception:  # an architecture this transformers cannot build: the facts stay, the counts are unknown
        return summary
    if model is None:
        return summary
    alternatives = "|".join(re.escape(f) for f in handler.vision_tower)
    tower = re.compile(rf"(?:.*\.)?(?:{alternatives})\..*")
    projector = tuple(f"{p}." for p in handler.projector)
    vision = merger = 0
    for name, parameter in model.named_parameters():
        if any(f".{p}" in f".{name}" for p in projector):
            merger += parameter.numel()
        elif tower.fullmatch(name):
            vision += parameter.numel()
    summary["vision_tower_parameters"], summary["projector_parameters"] = vision, merger
    return summary


def vision_line(summary: dict | None) -> str | None:
    """The `check`/`install` sentence about the vision tower (None for text models)."""
    if summary is None:
        return None

    count = summary["vision_tower_parameters"]
    tower = f"vision tower {human_count(count)} parameters" if count is not None else "vision tower"
    projector = (f", projector {human_count(summary['projector_parameters'])}"
                 if summary["projector_parameters"] else "")
    return (f"multimodal (image input): {tower}{projector}; LoRA adapts the language model and the projector, the "
            f"vision tower only with --train-vision-tower")
