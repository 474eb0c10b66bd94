"""Tiny multimodal models built offline: a LLaVA from a 2-layer CLIP vision config and a 2-layer Llama
config, with a locally trained tokenizer that has an `<image>` token, a CLIPImageProcessor and a
LlavaProcessor carrying a chat template; and solid-colour images drawn with Pillow."""

from __future__ import annotations

import json
from pathlib import Path

from tiny_models import CORPUS

IMAGE_SIZE = 32  # pixels; CLIP patches of 8 -> 16 image tokens per image
PATCH_SIZE = 8
HEAD_SCALE = 15.0
QUESTION = "What colour is this image?"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220), "yellow": (235, 225, 40)}
VISION_CORPUS = CORPUS + ["What colour is this image? It is red. It is green. It is blue. It is yellow."] * 20
# A processor chat template in ChatML with content parts, as processors' templates are written.
PART_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tiny_llava(dest: Path, seed: int = 0) -> Path:
    """Save a random tiny LLaVA (vision tower, projector, decoder) with its processor into `dest`."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from sources.builtin import train_bpe_tokenizer

    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = train_bpe_tokenizer(VISION_CORPUS, 320, dest)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.chat_template = PART_TEMPLATE
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=32)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=256, vocab_size=len(tokenizer),
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(
        "<image>"), vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():  # a random 64-wide head gives logits of +-1: too flat for a tiny model to be confident
        model.lm_head.weight.mul_(HEAD_SCALE)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(dest)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=PART_TEMPLATE).save_pretrained(dest)
    return dest


def colour_image(path: Path, colour: str, size: int = IMAGE_SIZE, jitter: int = 0) -> Path:
    """A solid-colour PNG (each channel shifted by `jitter`, so new images differ from the training ones)."""
    from PIL import Image

    rgb = tuple(max(0, min(255, c + jitter)) for c in COLOURS[colour])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), rgb).save(path)
    return path


def data_url(path: Path) -> str:
    """The image file as a data: URL, as a client sends an image part."""
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def colour_dataset(folder: Path, copies: int = 4) -> Path:
    """folder/colours.json: `image` + `question`/`answer` records, image paths relative to the file."""
    records = []
    for copy in range(copies):
        for colour in COLOURS:
            name = f"images/{colour}-{copy}.png"
            colour_image(folder / name, colour, jitter=copy * 3 - 4)
            records.append({"image": name, "question": QUESTION, "answer": colour})
    data = folder / "colours.json"
    data.write_text(json.dumps(records))
    return data


QWEN_VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def build_tiny_qwen2_vl(dest: Path):
    """(model, tokenizer, image processor) of a random tiny Qwen2-VL. Its full processor also needs a video
    processor, which needs torchvision (not installed here): tests expand the image tokens themselves."""
    import torch
    from transformers import AutoConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    from sources.builtin import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(VISION_CORPUS, 320, dest)
    tokenizer.add_tokens(list(QWEN_VISION_TOKENS), special_tokens=True)
    ids = dict(zip(("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id"),
                   tokenizer.convert_tokens_to_ids(list(QWEN_VISION_TOKENS)), strict=True))
    config = AutoConfig.for_model(
        "qwen2_vl", text_config={"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                                 "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": len(tokenizer),
                                 "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 2, "embed_dim": 32, "num_heads": 2, "hidden_size": 64}, **ids)
    torch.manual_seed(0)
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56)
    return Qwen2VLForConditionalGeneration(config), tokenizer, image_processor


def build_tiny_gemma3(dest: Path) -> Path:
    """Save a random tiny Gemma 3 (SigLIP tower, 4 soft tokens per image) with its Gemma3Processor into `dest`."""
    import torch
    from transformers import (
        AutoConfig,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        PreTrainedTokenizerFast,
    )

    from sources.builtin import train_bpe_tokenizer

    dest.mkdir(parents=True, exist_ok=True)
    markers = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    base = train_bpe_tokenizer(VISION_CORPUS, 320, dest)
    base.add_tokens(list(markers.values()), special_tokens=True)
    base.save_pretrained(dest)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(dest, extra_special_tokens=markers)
    template = PART_TEMPLATE.replace("'<image>'", "'<start_of_image>'")
    tokenizer.chat_template = template
    boi, eoi, soft = tokenizer.convert_tokens_to_ids(list(markers.values()))
    config = AutoConfig.for_model(
        "gemma3", text_config={"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                               "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                               "vocab_size": len(tokenizer)},
        vision_config={"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                       "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE},
        mm_tokens_per_image=4, boi_token_index=boi, eoi_token_index=eoi, image_token_index=soft)
    torch.manual_seed(0)
    Gemma3ForConditionalGeneration(config).save_pretrained(dest)
    Gemma3Processor(image_processor=Gemma3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}),
                    tokenizer=tokenizer, chat_template=template, image_seq_length=4).save_pretrained(dest)
    return dest


def build_tiny_idefics3(dest: Path) -> Path:
    """Save a random tiny Idefics3 (image splitting into 32-pixel crops, 4 tokens per crop) with its processor."""
    import torch
    from transformers import AutoConfig, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    from sources.builtin import train_bpe_tokenizer

    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = train_bpe_tokenizer(VISION_CORPUS, 320, dest)
    tokenizer.add_tokens(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"],
                         special_tokens=True)
    tokenizer.chat_template = PART_TEMPLATE
    config = AutoConfig.for_model(
        "idefics3", text_config={"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                                 "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": len(tokenizer)},
        vision_config={"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                       "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE},
        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    Idefics3ForConditionalGeneration(config).save_pretrained(dest)
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 2 * IMAGE_SIZE},
                                             max_image_size={"longest_edge": IMAGE_SIZE})
    Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                      chat_template=PART_TEMPLATE).save_pretrained(dest)
    return dest
