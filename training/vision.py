"""Training multimodal (image-text-to-text) models: the processor builds each example's inputs, images are
read once before training (the pre-flight check), rows are never packed, and the image tensors travel with
their row through the micro-batch into the model's multimodal forward.

Why no packing: the models expand each image into many placeholder tokens and compute positions of their
own (Qwen2-VL's multimodal rotary positions), and the image tensors of a row must match its placeholders
one for one. Every example of a multimodal model (text-only ones too) is therefore its own row, padded within
its micro-batch, with an attention mask instead of packed position ids.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path

from handlers.chat_templates import bound_rendering, part_messages
from handlers.generic import discover_linear_targets
from training.data.files import DataError
from training.data.formats import Example
from training.data.tokenize import IGNORE_INDEX, Tokenized, tokenize_all
from training.data.vision import image_base, load_image
from training.modeling import ModelLoadError
from training.report import SAMPLE_TOKENS

log = logging.getLogger("train")
# Keys of the processor's output that are not image tensors.
TEXT_KEYS = ("input_ids", "attention_mask")


@dataclass
class ImageInputs:
    """One example's image tensors (as the processor made them) and its per-token extras (token type ids)."""

    tensors: dict = field(default_factory=dict)
    per_token: dict[str, list[int]] = field(default_factory=dict)
    sizes: list[tuple[int, int]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.tensors)

    def truncate(self, length: int) -> None:
        self.per_token = {key: values[:length] for key, values in self.per_token.items()}


def load_processor(model_path: Path, trust_remote_code: bool = False):
    """The model's processor (image processor + tokenizer + chat template); ModelLoadError when it has none."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"This multimodal model has no usable processor in {model_path}: "
                             f"{str(exc).splitlines()[0]}") from exc
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or not hasattr(processor, "image_processor"):
        raise ModelLoadError(f"The processor in {model_path} has no tokenizer or image processor: it cannot "
                             f"prepare image examples.")
    if not (getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)):
        raise ModelLoadError(f"The processor in {model_path} has no chat template: image conversations cannot be "
                             f"rendered.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    bound_rendering(processor, str(model_path))  # a hostile template fails in one sentence, not a hang
    return processor


def _render(processor, messages: list[dict], add_generation_prompt: bool) -> str:
    template = getattr(processor, "chat_template", None) or processor.tokenizer.chat_template
    return processor.apply_chat_template(part_messages(messages), chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def _answer_spans(processor, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn (end-of-turn included)."""
    full = _render(processor, messages, False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _render(processor, messages[:index], True) if index else ""
        through = _render(processor, messages[: index + 1], False)
        if full.startswith(prefix) and full.startswith(through) and len(through) > len(prefix):
            spans.append((len(prefix), len(through)))
    return full, spans


def _plain_labels(tokenizer, text: str, spans, train_on_prompt: bool) -> tuple[list[int], list[int]]:
    encoding = tokenizer(text, return_offsets_mapping=True)
    labels = []
    for token_id, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True):
        inside = any(s <= start < e or (start == end and s < end <= e) for s, e in spans)
        labels.append(token_id if (train_on_prompt or inside) else IGNORE_INDEX)
    return list(encoding["input_ids"]), labels


def align_labels(plain_ids: list[int], plain_labels: list[int], expanded_ids: list[int]) -> tuple[list[int], int]:
    """Labels for the processor's ids (image placeholders expanded): copied where the two tokenizations agree,
    ignored inside expansions. Also returns where the last expansion ends (truncation must not cut an image)."""
    labels = [IGNORE_INDEX] * len(expanded_ids)
    last_image_end = 0
    matcher = SequenceMatcher(None, plain_ids, expanded_ids, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            labels[j1:j2] = plain_labels[i1:i2]
        elif j2 > j1:
            last_image_end = j2
    return labels, last_image_end


def tokenize_vision_example(processor, example: Example, max_length: int, train_on_prompt: bool = False) -> Tokenized:
    """Token ids (images expanded by the processor), labels on the answers, and the image tensors of one example."""
    where = f"{example.origin}, record {example.index + 1}"
    if not example.is_chat:  # completion/text examples on a multimodal model: plain text, no image
        text = example.prompt + example.completion + (processor.tokenizer.eos_token or "")
        spans = [(len(example.prompt), len(text))]
    else:
        if not any(m["role"] == "assistant" for m in example.messages) and not train_on_prompt:
            raise DataError(f"{where}: no assistant message to learn from.")
        text, spans = _answer_spans(processor, example.messages)
        eos = processor.tokenizer.eos_token or ""
        if eos and spans and eos not in text[spans[-1][0]:spans[-1][1]]:
            text = text[: spans[-1][1]] + eos + text[spans[-1][1]:]
            spans[-1] = (spans[-1][0], spans[-1][1] + len(eos))
    plain_ids, plain_labels = _plain_labels(processor.tokenizer, text, spans, train_on_prompt)
    base = image_base(example.origin)
    images = [load_image(ref, base, where) for ref in example.images]
    inputs = ImageInputs(sizes=[image.size for image in images])
    if not images:
        ids, labels = plain_ids, plain_labels
        last_image_end = 0
    else:
        try:
            output = processor(text=[text], images=images, return_tensors="pt")
        except ValueError as exc:  # e.g. placeholders and images disagree in number
            raise DataError(f"{where}: the processor rejected the example: {str(exc).splitlines()[0]}") from exc
        ids = output["input_ids"][0].tolist()
        labels, last_image_end = align_labels(plain_ids, plain_labels, ids)
        for key, value in output.items():
            if key in TEXT_KEYS:
                continue
            if getattr(value, "dim", lambda: 0)() == 2 and tuple(value.shape) == (1, len(ids)):
                inputs.per_token[key] = value[0].tolist()
            else:
                inputs.tensors[key] = value
    truncated = len(ids) > max_length
    if truncated and last_image_end > max_length:
        raise DataError(f"{where}: with its image tokens the example is {len(ids)} tokens, and --max-seq-length "
                        f"{max_length} would cut an image; raise --max-seq-length or use smaller images.")
    inputs.truncate(max_length)
    result = Tokenized(ids[:max_length], labels[:max_length], truncated)
    result.images = inputs  # set even without images: a multimodal model's rows are never packed
    return result


def image_report(examples: list[Example], tokenized: list[Tokenized]) -> str:
    """The pre-flight line: how many images, their sizes, image tokens and the memory their tensors take."""
    sizes = [size for t in tokenized if t.images for size in t.images.sizes]
    with_images = sum(1 for t in tokenized if t.images)
    if not sizes:
        return f"Images: none in {len(examples)} examples (a multimodal model trained on text only)."
    pixels = [w * h for w, h in sizes]
    smallest, largest = sizes[pixels.index(min(pixels))], sizes[pixels.index(max(pixels))]
    tensor_bytes = sum(v.numel() * v.element_size() for t in tokenized if t.images for v in t.images.tensors.values())
    lengths = [len(t.input_ids) for t in tokenized if t.images]
    return (f"Images: {len(sizes)} in {with_images} of {len(examples)} examples, sizes {smallest[0]}x{smallest[1]} to "
            f"{largest[0]}x{largest[1]}, {tensor_bytes / 2**20:.1f} MiB of image tensors held in memory; median "
            f"image example {statistics.median(lengths):g} tokens with its image tokens; rows are not packed for this "
            f"model (one example per row, padded).")


def prepare(model_path: Path, examples: list[Example], max_length: int, train_on_prompt: bool,
            trust_remote_code: bool = False):
    """(tokenizer, tokenized examples, False) for a multimodal model: the processor's template is the model's
    own, so no fallback template is ever saved with the adapter."""
    processor = load_processor(model_path, trust_remote_code)
    tokenized = tokenize_all(processor, examples, max_length, train_on_prompt, tokenize_vision_example)
    log.info("%s", image_report(examples, tokenized))
    return processor.tokenizer, tokenized, False


def lora_targets(model, handler, targets: list[str], train_vision_tower: bool,
                 chosen_by_user: bool = False) -> tuple[list[str], str | None]:
    """(LoRA targets, modules excluded) for any model: text models unchanged; multimodal ones per `vision_targets`
    (the projector added unless --target-modules or a checkpoint fixed the targets), logged in words."""
    if multimodal_backbone(model) is None or not handler.vision_tower:
        if train_vision_tower:
            log.info("--train-vision-tower changes nothing: this is a text-only model.")
        return list(targets), None
    chosen, exclude = vision_targets(model, handler, targets, train_vision_tower, add_projector=not chosen_by_user)
    log.info("Multimodal LoRA: %s.", "the targets given" + ("" if train_vision_tower else
                                                             ", the vision tower left out (--train-vision-tower adapts it)")
             if chosen_by_user else describe_targets(handler, train_vision_tower))
    return chosen, exclude


# --- model ---------------------------------------------------------------------------------------
def multimodal_backbone(causal):
    """The module that merges image features into the text (LlavaModel, Qwen2VLModel, ...) when `causal` is an
    image-text-to-text model, else None. Its forward takes pixel_values and returns the decoder's hidden states."""
    config = getattr(causal, "config", None)
    if config is None or getattr(config, "vision_config", None) is None:
        return None
    prefix = getattr(causal, "base_model_prefix", "model")
    return getattr(causal, prefix, None)


def _fragment_pattern(fragments: tuple[str, ...]) -> str:
    import re

    alternatives = "|".join(re.escape(f) for f in fragments)
    return rf"(?:.*\.)?(?:{alternatives})(?:\..*)?"


def vision_targets(model, handler, targets: list[str], train_vision_tower: bool,
                   add_projector: bool = True) -> tuple[list[str], str | None]:
    """(LoRA targets, exclude pattern): the projector added (by default), the vision tower excluded unless
    --train-vision-tower, which adds its linear layers to the targets instead."""
    import re

    pattern = _fragment_pattern(handler.vision_tower)
    names = [name for name, _ in model.named_modules()]
    # the projector is adapted by default whatever the targets ('all-linear' skips Qwen's mlp.0 / mlp.2)
    targets = list(targets) + [p for p in handler.projector if add_projector and p not in targets and
                               p.rsplit(".", 1)[-1] not in targets and any(name.endswith("." + p) for name in names)]
    tower_linears, elsewhere = set(), set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if re.fullmatch(pattern, name):
            if type(module).__name__ in ("Linear", "Conv1D"):
                tower_linears.add(leaf)
        else:
            elsewhere.add(leaf)
    if train_vision_tower:
        extra = sorted(leaf for leaf in tower_linears if leaf not in targets and not leaf.isdigit())
        return list(targets) + extra, None
    # names found only in the vision tower ('all-linear' discovers them) would adapt nothing: leave them out
    kept = [t for t in targets if "." in t or t in elsewhere]
    # peft warns when an exclusion matches nothing: only exclude when a target also names a vision-tower layer
    overlap = tower_linears & set(kept) & set(discover_linear_targets(model))
    return kept, pattern if overlap else None


def describe_targets(handler, train_vision_tower: bool) -> str:
    """One phrase for the log: what LoRA adapts in a multimodal model."""
    projector = f"the projector ({', '.join(handler.projector)})" if handler.projector else \
        "not the projector (no linear layer to adapt)"
    tower = " and the vision tower (--train-vision-tower)" if train_vision_tower else \
        f"; the vision tower ({', '.join(handler.vision_tower)}) stays frozen (--train-vision-tower adapts it)"
    return f"the language model, {projector}{tower}"


# --- the end-of-run sample ----------------------------------------------------------------------------
def sample_answers(model, model_path: Path, adapter_dir: Path, examples: list[Example], held_out: bool,
                   device: str) -> dict:
    """Greedy answers of the base model and of the chosen adapter to one image example's prompt."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    processor = load_processor(model_path)

    set_peft_model_state_dict(model, load_file(str(adapter_dir / "adapter_model.safetensors"), device=device))
    model.eval()
    example = next((e for e in reversed(examples) if e.images and e.is_chat), examples[-1])
    turns = []
    for message in example.messages:
        if message["role"] == "assistant":
            break
        turns.append(message)
    base = image_base(example.origin)
    images = [load_image(ref, base, example.origin) for ref in example.images[: sum(
        1 for m in turns if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image")]]
    text = _render(processor, turns, True)
    inputs = processor(text=[text], images=images or None, return_tensors="pt").to(device)

    def generate() -> str:
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=SAMPLE_TOKENS, do_sample=False,
                                    pad_token_id=processor.tokenizer.pad_token_id, use_cache=True)
        return processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    tuned = generate()
    with model.disable_adapter():
        original = generate()
    last = turns[-1]["content"] if turns else ""
    shown = last if isinstance(last, str) else " ".join(p.get("text", "[image]") for p in last)
    return {"prompt": shown, "base": original, "tuned": tuned, "held_out": held_out}
