"""Multimodal training with tiny models built offline: the processor's inputs and answer-only labels, unpacked
image rows, the vision tower frozen unless asked, every family's LoRA targets, Qwen2-VL / Gemma 3 / Idefics3
batches through the multimodal backbone, and bad image data failing cleanly."""

from __future__ import annotations

import json
import shutil

import pytest
from tiny_vision import COLOURS, QUESTION, colour_image

from training.data.files import DataError
from training.data.formats import Example
from training.data.tokenize import IGNORE_INDEX

pytest_plugins = ["vision_fixtures"]  # llava_source, trained_llava (session-scoped)


@pytest.fixture(scope="module")
def processor(llava_source):
    from training.vision import load_processor

    return load_processor(llava_source)

def _example(tmp_path, colour="red", answer="red"):
    image = colour_image(tmp_path / f"{colour}.png", colour)
    return Example("vision", str(tmp_path / "data.json"), 0, images=[str(image)], messages=[
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": answer}])


def test_processor_expands_images_and_labels_only_the_answer(processor, tmp_path):
    from training.vision import tokenize_vision_example

    tokenized = tokenize_vision_example(processor, _example(tmp_path), 256)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert tokenized.input_ids.count(image_id) == 16  # (32 / 8)^2 patches, CLS dropped
    assert tuple(tokenized.images.tensors["pixel_values"].shape) == (1, 3, 32, 32)
    labelled = processor.tokenizer.decode([t for t, label in zip(tokenized.input_ids, tokenized.labels, strict=True)
                                           if label != IGNORE_INDEX])
    assert labelled.startswith("red<|im_end|>") and QUESTION not in labelled
    with pytest.raises(DataError, match="record 1: with its image tokens the example is .* would cut an image"):
        tokenize_vision_example(processor, _example(tmp_path), 12)


def test_image_rows_are_not_packed_and_carry_their_pixels(processor, tmp_path):
    from training.data.packing import collate, pack_rows
    from training.vision import tokenize_vision_example

    short = tokenize_vision_example(processor, _example(tmp_path, "red", "red"), 256)
    long = tokenize_vision_example(processor, _example(tmp_path, "blue", "blue and a long answer"), 256)
    rows = pack_rows([short, long], 256)
    assert len(rows) == 2 and all(row.images for row in rows)
    batch = collate(rows, processor.tokenizer.pad_token_id)
    assert "position_ids" not in batch and tuple(batch["pixel_values"].shape) == (2, 3, 32, 32)
    assert batch["attention_mask"].sum(1).tolist() == [len(long.input_ids), len(short.input_ids)]
    # the longer row (blue) comes first; its pixels travel with it
    assert batch["pixel_values"][0].mean() != batch["pixel_values"][1].mean()
    text = tokenize_vision_example(processor, Example("qa", "d.json", 1, messages=[
        {"role": "user", "content": "Say red."}, {"role": "assistant", "content": "red"}]), 256)
    mixed = pack_rows([text, short], 256)  # a text example of a multimodal model is not packed either
    assert len(mixed) == 2 and tuple(collate(mixed, 0)["pixel_values"].shape) == (1, 3, 32, 32)
    assert "position_ids" not in collate(pack_rows([text, text], 256), 0)


@pytest.mark.parametrize("train_tower", [False, True])
def test_vision_tower_is_frozen_unless_asked(llava_source, train_tower):
    from handlers import handler_for_config
    from training.modeling import Placement, load_base_model, resolve_targets, wrap_with_lora
    from training.vision import lora_targets

    config = json.loads((llava_source / "config.json").read_text())
    handler = handler_for_config(config)
    model = load_base_model(llava_source, Placement("cpu", "float32"), handler, "lora", False)
    targets = resolve_targets(model, handler, None, 145_000)
    targets, exclude = lora_targets(model, handler, targets, train_tower)
    model = wrap_with_lora(model, targets, 4, 8, 0.0, False, False, exclude)
    adapted = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("multi_modal_projector.linear_1.lora_A" in n for n in adapted)
    assert any("language_model.layers.1.self_attn.q_proj.lora_A" in n for n in adapted)
    assert any("vision_tower" in name for name in adapted) is train_tower


# Tiny configs of each multimodal family (built on the meta device: no weights, no compute).
FAMILY_CONFIGS = {
    "llava": ("llava", {}),
    "qwen2_vl": ("qwen_vl", {"text_config": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                                             "num_attention_heads": 4, "num_key_value_heads": 2},
                             "vision_config": {"depth": 2, "embed_dim": 32, "num_heads": 2, "hidden_size": 64}}),
    "qwen2_5_vl": ("qwen_vl", {"text_config": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                                               "num_attention_heads": 4, "num_key_value_heads": 2},
                               "vision_config": {"depth": 2, "hidden_size": 32, "num_heads": 2,
                                                 "intermediate_size": 64, "out_hidden_size": 64}}),
    "gemma3": ("gemma3", {"text_config": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                                          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16},
                          "vision_config": {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
                                            "num_attention_heads": 2}}),
    "idefics3": ("idefics", {"text_config": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                                             "num_attention_heads": 4, "num_key_value_heads": 2},
                             "vision_config": {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
                                               "num_attention_heads": 2}}),
    "smolvlm": ("idefics", {"text_config": {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                                            "num_attention_heads": 4, "num_key_value_heads": 2},
                            "vision_config": {"num_hidden_layers": 2, "hidden_size": 32, "intermediate_size": 64,
                                              "num_attention_heads": 2}}),
}


@pytest.mark.parametrize("model_type", sorted(FAMILY_CONFIGS))
def test_family_handlers_adapt_language_model_and_projector_not_the_vision_tower(model_type):
    import re

    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForImageTextToText

    from handlers import handler_for_config
    from handlers.generic import discover_linear_targets
    from installer.vision_info import vision_summary
    from training.vision import vision_targets

    handler_name, overrides = FAMILY_CONFIGS[model_type]
    config = AutoConfig.for_model(model_type, **overrides)
    as_json = config.to_dict()
    handler = handler_for_config(as_json)
    assert handler.name == handler_name and handler.is_multimodal(as_json)
    with init_empty_weights():
        model = AutoModelForImageTextToText.from_config(config)
    default = list(handler.target_modules) + list(handler.projector)  # the >= 50M recipe
    for targets in (default, discover_linear_targets(model)):  # and the small-model 'all-linear'
        chosen, exclude = vision_targets(model, handler, targets, False)
        adapted = [name for name, module in model.named_modules() if type(module).__name__ == "Linear"
                   and any(name == t or name.endswith("." + t) for t in chosen)
                   and not (exclude and re.fullmatch(exclude, name))]
        tower = [n for n in adapted if any(f".{f}." in f".{n}." for f in handler.vision_tower)]
        assert not tower, tower[:3]
        assert any(("language_model" in n or "text_model" in n) and n.endswith("q_proj") for n in adapted)
        for projector in handler.projector:
            assert any(n.endswith(projector) for n in adapted), projector
    with_tower, _ = vision_targets(model, handler, default, True)
    assert set(with_tower) > set(default) or model_type == "llava"  # CLIP's q/k/v names are already there
    summary = vision_summary(as_json, handler)
    assert summary["vision_tower_parameters"] > 0 and (summary["projector_parameters"] > 0) == bool(handler.projector)


def test_qwen2_vl_rows_train_through_the_multimodal_backbone(tmp_path):
    """Qwen2-VL's flat patch tensors, grid sizes and per-token types collate by row, and the loss (through the
    backbone that merges the images, positions computed by the model) is the model's own."""
    from PIL import Image
    from tiny_vision import build_tiny_qwen2_vl

    from training.data.packing import collate, pack_rows
    from training.data.tokenize import Tokenized
    from training.objectives.losses import sft_loss_module
    from training.vision import ImageInputs

    model, tokenizer, image_processor = build_tiny_qwen2_vl(tmp_path)
    image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    rows = []
    for index, colour in enumerate(("red", "blue")):
        tensors = dict(image_processor(images=[Image.new("RGB", (56, 56), COLOURS[colour])], return_tensors="pt"))
        count = int(tensors["image_grid_thw"].prod()) // 4  # 2x2 patches merge into one token
        ids = tokenizer(f"<|im_start|>user\n<|vision_start|>{'<|image_pad|>' * count}<|vision_end|>{QUESTION}"
                        f"<|im_end|>\n<|im_start|>assistant\n{colour}{' indeed' * index}<|im_end|>\n")["input_ids"]
        labels = [IGNORE_INDEX] * (len(ids) - 3 - index) + ids[len(ids) - 3 - index:]
        example = Tokenized(ids, labels)
        example.images = ImageInputs(tensors, {"mm_token_type_ids": [int(i == image_token) for i in ids]})
        rows.append(example)
    batch = collate(pack_rows(rows, 256), tokenizer.pad_token_id)
    assert tuple(batch["image_grid_thw"].shape) == (2, 3) and batch["pixel_values"].shape[0] == 2 * 16
    loss_sum, count = sft_loss_module(model)(**batch)
    assert abs(float((loss_sum / count).detach()) - float(model(**batch).loss.detach())) < 1e-4


def test_gemma3_processor_inputs_training_loss_and_serving_prompt(tmp_path):
    """Gemma 3 through its own processor: token type ids travel per token, labels stay on the answers, the loss
    is the model's own, and a served image prompt generates."""
    from types import SimpleNamespace

    import torch
    from PIL import Image
    from tiny_vision import build_tiny_gemma3
    from transformers import AutoModelForImageTextToText

    from handlers import is_multimodal_dir
    from serving.engines.multimodal import processor_prompt
    from training.data.packing import collate, pack_rows
    from training.objectives.losses import sft_loss_module
    from training.vision import load_processor, tokenize_vision_example

    source = build_tiny_gemma3(tmp_path / "gemma3")
    assert is_multimodal_dir(source)
    processor = load_processor(source)
    rows = [tokenize_vision_example(processor, _example(tmp_path, colour, colour + " indeed" * index), 256)
            for index, colour in enumerate(("red", "blue"))]
    soft = processor.tokenizer.convert_tokens_to_ids("<image_soft_token>")
    assert rows[0].input_ids.count(soft) == 4 and rows[0].images.per_token["token_type_ids"].count(1) == 4
    answer = [t for t, label in zip(rows[0].input_ids, rows[0].labels, strict=True) if label != IGNORE_INDEX]
    assert processor.tokenizer.decode(answer).startswith("red<|im_end|>")
    batch = collate(pack_rows(rows, 256), processor.tokenizer.pad_token_id)
    assert tuple(batch["token_type_ids"].shape) == tuple(batch["input_ids"].shape)
    model = AutoModelForImageTextToText.from_pretrained(source)
    loss_sum, count = sft_loss_module(model)(**batch)
    assert abs(float((loss_sum / count).detach()) - float(model(**batch).loss.detach())) < 1e-4
    engine = SimpleNamespace(processor=processor)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor_prompt(engine, messages, [Image.new("RGB", (40, 30), COLOURS["red"])], processor.chat_template)
    assert prompt.count(soft) == 4 and set(prompt.inputs) >= {"pixel_values", "token_type_ids"}
    ids = torch.tensor([list(prompt)])
    with torch.no_grad():
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                                do_sample=False, **prompt.inputs)
    assert output.shape[1] == ids.shape[1] + 2


def test_idefics3_crops_of_different_counts_pad_and_train(tmp_path):
    """Idefics3 splits images into crops: a square and a wide image give 5 and 3 crops, padded with empty crops
    (which the model drops) in one micro-batch; the loss is the model's own."""
    from PIL import Image
    from tiny_vision import build_tiny_idefics3
    from transformers import AutoModelForImageTextToText

    from training.data.packing import collate, pack_rows
    from training.objectives.losses import sft_loss_module
    from training.vision import load_processor, tokenize_vision_example

    source = build_tiny_idefics3(tmp_path / "idefics3")
    processor = load_processor(source)
    rows = []
    for colour, width in (("red", 32), ("blue", 64)):
        picture = tmp_path / f"{colour}-{width}x32.png"
        Image.new("RGB", (width, 32), COLOURS[colour]).save(picture)
        example = _example(tmp_path, colour, colour)
        example.images = [str(picture)]
        rows.append(tokenize_vision_example(processor, example, 256))
    assert [r.images.tensors["pixel_values"].shape[1] for r in rows] == [5, 3]
    batch = collate(pack_rows(rows, 256), processor.tokenizer.pad_token_id)
    assert tuple(batch["pixel_values"].shape) == (2, 5, 3, 32, 32)
    assert batch["pixel_attention_mask"][1, 3:].sum() == 0  # the wide image's two padding crops are empty
    model = AutoModelForImageTextToText.from_pretrained(source)
    loss_sum, count = sft_loss_module(model)(**batch)
    assert abs(float((loss_sum / count).detach()) - float(model(**batch).loss.detach())) < 1e-4


def test_check_reports_a_multimodal_model(llava_source):
    from conftest import run_cli

    report = json.loads(run_cli("check", str(llava_source), "--json").output)
    vision = report["vision"]
    assert report["multimodal"] is True and report["handler"] == "llava"
    assert 0 < vision["vision_tower_parameters"] < report["parameters"] and vision["projector_parameters"] > 0
    assert "Input:           multimodal (image input): vision tower" in run_cli("check", str(llava_source)).output


def test_text_only_variant_of_a_multimodal_family_is_text_only():
    from handlers import handler_for_config

    config = {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]}
    assert handler_for_config(config).name == "gemma3" and not handler_for_config(config).is_multimodal(config)


def test_training_a_multimodal_model_on_bad_images_fails_cleanly(llava_source, tmp_path, capsys):
    import train_lora

    model_dir = tmp_path / "m"
    shutil.copytree(llava_source, model_dir / "model")
    (tmp_path / "notes.png").write_text("plain text")
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"image": "notes.png", "caption": "c"}]))
    assert train_lora.main(["--model-dir", str(model_dir), "--data", str(data), "--no-tensorboard"]) == 1
    assert f"Error: {data}, record 1: {tmp_path / 'notes.png'} is not an image" in capsys.readouterr().err
