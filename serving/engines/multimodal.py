"""A multimodal model's chat prompt: the conversation rendered by its processor (chat template and image token
expansion), with the image tensors `generate` needs. serving/images.py decodes and checks the request's images."""

from __future__ import annotations

from handlers.chat_templates import part_messages


class PromptIds(list):
    """A prompt's token ids (a list, as every caller expects) with the processor's image tensors for `generate`."""

    def __init__(self, ids, inputs: dict | None = None):
        super().__init__(ids)
        self.inputs = inputs or {}


def processor_prompt(engine, messages: list[dict], images: list, template: str | None,
                     tools: list[dict] | None = None, template_kwargs: dict | None = None) -> PromptIds:
    """The token ids of a conversation rendered by the processor (image tokens expanded) with its image tensors."""
    processor = engine.processor
    extra = {**(template_kwargs or {}), **({"tools": tools} if tools and "tools" in (template or "") else {})}
    try:
        text = processor.apply_chat_template(part_messages(messages), chat_template=template, tokenize=False,
                                             add_generation_prompt=True, **extra)
    except Exception as exc:  # jinja2 TemplateError / raise_exception() inside the template
        raise ValueError(f"The model's chat template rejected these messages: {exc}") from exc
    placeholders = sum(1 for m in messages if isinstance(m["content"], list) for p in m["content"]
                       if p["type"] == "image")
    if placeholders != len(images):
        raise ValueError(f"{placeholders} image places in the conversation for {len(images)} images.")
    if not images:
        return PromptIds(processor.tokenizer(text)["input_ids"])  # as training tokenizes (training/vision.py)
    try:
        output = processor(text=[text], images=images, return_tensors="pt")
    except ValueError as exc:
        raise ValueError(f"The model's processor rejected the images: {str(exc).splitlines()[0]}") from exc
    inputs = {key: value for key, value in output.items() if key not in ("input_ids", "attention_mask")}
    return PromptIds(output["input_ids"][0].tolist(), inputs)
