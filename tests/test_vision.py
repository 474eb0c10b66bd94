"""Multimodal models end to end with a tiny LLaVA built offline: the processor's inputs and answer-only labels,
unpacked image rows, the vision tower frozen unless asked, every family's LoRA targets, and the main proof:
trained on solid-colour images labelled with their colour, the served model names the colour of new images
(a model that ignored the images could name at most one colour for all of them)."""

from __future__ import annotations

import base64
import io
import json
import logging
import shutil

import pytest
from tiny_vision import COLOURS, build_tiny_llava, colour_dataset, colour_image

from training.data_files import DataError
from training.formats import Example
from training.tokenize import IGNORE_INDEX

QUESTION = "What colour is this image?"


@pytest.fixture(scope="module")
def llava_source(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("src") / "tiny-llava")


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
    from training.packing import collate, pack_rows
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

    from training.objectives import sft_loss_module
    from training.packing import collate, pack_rows
    from training.tokenize import Tokenized
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
    assert abs(float(loss_sum / count) - float(model(**batch).loss)) < 1e-4


def test_gemma3_processor_inputs_training_loss_and_serving_prompt(tmp_path):
    """Gemma 3 through its own processor: token type ids travel per token, labels stay on the answers, the loss
    is the model's own, and a served image prompt generates."""
    from types import SimpleNamespace

    import torch
    from PIL import Image
    from tiny_vision import build_tiny_gemma3
    from transformers import AutoModelForImageTextToText

    from handlers import is_multimodal_dir
    from serving.images import processor_prompt
    from training.objectives import sft_loss_module
    from training.packing import collate, pack_rows
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
    assert abs(float(loss_sum / count) - float(model(**batch).loss)) < 1e-4
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

    from training.objectives import sft_loss_module
    from training.packing import collate, pack_rows
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
    assert abs(float(loss_sum / count) - float(model(**batch).loss)) < 1e-4


def test_text_only_variant_of_a_multimodal_family_is_text_only():
    from handlers import handler_for_config

    config = {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"]}
    assert handler_for_config(config).name == "gemma3" and not handler_for_config(config).is_multimodal(config)


# --- the colour test -----------------------------------------------------------------------------------------
def _data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _ask(client, model, image_url):
    answer = client.chat.completions.create(model=model, temperature=0, max_tokens=4, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                     {"type": "text", "text": QUESTION}]}])
    return answer.choices[0].message.content.strip()


@pytest.fixture(scope="module")
def trained_llava(llava_source, tmp_path_factory):
    """The tiny LLaVA installed with `llm-installer install DIR`, trained by train.sh's engine on coloured squares."""
    from conftest import run_cli

    import train_lora

    root = tmp_path_factory.mktemp("vision")
    result = run_cli("install", str(llava_source), "--name", "tiny-llava", "--models-dir", str(root / "models"))
    assert result.exit_code == 0 and "multimodal (image input): vision tower" in result.output, result.output
    model_dir = root / "models" / "tiny-llava"
    data = colour_dataset(root / "data")
    lines = io.StringIO()
    handler, logger = logging.StreamHandler(lines), logging.getLogger("train")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.INFO
    try:
        status = train_lora.main(["--model-dir", str(model_dir), "--data", str(data), "--epochs", "6",
                                  "--validation-split", "0", "--no-tensorboard", "--skip-test", "--seed", "1"])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert status == 0
    (model_dir / "train-log.txt").write_text(lines.getvalue())
    return model_dir


@pytest.mark.e2e
def test_trained_model_names_the_colour_of_new_images_over_the_api(trained_llava, tmp_path):
    from openai import OpenAI
    from serving_helpers import load_state, running_server

    log = (trained_llava / "train-log.txt").read_text()
    assert "Images: 16 in 16 of 16 examples, sizes 32x32 to 32x32" in log and "rows are not packed for this model" in log
    assert "vision tower (vision_tower) stays frozen" in log
    state = load_state(trained_llava)
    assert state.max_body_bytes == 28_000_000  # room for images by default
    new = {colour: _data_url(colour_image(tmp_path / f"{colour}.png", colour, jitter=6)) for colour in COLOURS}
    with running_server(state) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused")
        answers = {colour: _ask(client, "tiny-llava:lora", image) for colour, image in new.items()}
        assert answers == {colour: colour for colour in COLOURS}
        base = {_ask(client, "tiny-llava", image) for image in new.values()}
        assert base != set(COLOURS)  # the untrained model does not know colours


@pytest.mark.e2e
def test_web_page_attaches_images(trained_llava, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    from serving_helpers import load_state, running_server
    from test_start_sh import _browser

    with running_server(load_state(trained_llava)) as url:
        browser = _browser()
        try:
            browser.get(url + "/")
            wait = WebDriverWait(browser, 60)
            wait.until(lambda b: "adapter" in b.find_element(By.ID, "model").text)
            temperature = browser.find_element(By.ID, "temperature")
            temperature.clear()
            temperature.send_keys("0")
            limit = browser.find_element(By.ID, "max-tokens")
            limit.clear()
            limit.send_keys("8")  # the tiny model's context is 256 tokens
            for colour in ("red", "blue"):
                browser.find_element(By.ID, "clear").click()
                picture = colour_image(tmp_path / f"{colour}.png", colour, jitter=-5)
                browser.find_element(By.ID, "attach").send_keys(str(picture))
                wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#attached img"))
                box = browser.find_element(By.ID, "input")
                box.send_keys(QUESTION)
                box.send_keys(Keys.ENTER)
                wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-state='done'], .msg.error"))
                answer = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant, .msg.error")[0].text
                assert answer == colour
                assert browser.find_elements(By.CSS_SELECTOR, ".msg.user img")  # the picture shows in the chat
                assert not browser.find_elements(By.CSS_SELECTOR, "#attached img")  # sent with that message only
        finally:
            browser.quit()


@pytest.mark.e2e
def test_chat_image_command(trained_llava, tmp_path):
    from serving_helpers import load_state

    from serving.router import Router
    from serving.terminal import chat_loop

    engine = load_state(trained_llava).engine
    adapter = engine.adapters
    router = Router("tiny-llava", adapter, next(iter(adapter)))
    image = colour_image(tmp_path / "g.png", "green", jitter=5)
    stdin = io.StringIO(f"/image {tmp_path / 'nope.png'}\n/image {image}\n{QUESTION}\n")
    stdout = io.StringIO()
    assert chat_loop(engine, router, stdin, stdout, temperature=0) == 0
    out = stdout.getvalue()
    assert f"({tmp_path / 'nope.png'} does not exist.)" in out and "attached (32x32)" in out
    assert "> green" in out


@pytest.mark.e2e
def test_merged_export_carries_the_processor(trained_llava, tmp_path):
    import torch
    from conftest import run_cli
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = tmp_path / "merged"
    result = run_cli("export", str(trained_llava), "--format", "merged", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "processor_config.json").is_file()
    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.new("RGB", (32, 32), COLOURS["blue"])], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True) == "blue"


def test_text_only_model_and_bad_images_are_400(tmp_path):
    import httpx2 as httpx
    from serving_helpers import ScriptedEngine, running_server

    from serving.app import ServerState
    from serving.router import Router

    png = colour_image(tmp_path / "r.png", "red")
    state = ServerState(router=Router("m", {}, None), max_body_bytes=28_000_000)
    state.engine = ScriptedEngine("ok")

    def post(content):
        return httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": content}]})

    image = {"type": "image_url", "image_url": {"url": _data_url(png)}}
    with running_server(state) as url:
        page = httpx.get(url + "/").text  # the chat page attaches images as OpenAI image parts
        assert 'type="file" accept="image/*"' in page and 'type: "image_url", image_url: {url: url}' in page
        refused = post([image, {"type": "text", "text": "?"}])
        assert refused.status_code == 400 and "text-only" in refused.json()["error"]["message"]
        state.engine.processor = object()  # a multimodal engine: the images themselves are checked now
        for content, code in (
                ([{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}], "remote_image_refused"),
                ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}], "invalid_image"),
                ([{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGVsbG8="}}], "invalid_image"),
                ([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}], "invalid_image"),
                ([image] * 9, "too_many_images")):
            answer = post(content)
            assert answer.status_code == 400 and answer.json()["error"]["code"] == code, answer.text


def test_remote_images_are_fetched_only_when_allowed(tmp_path):
    import functools
    import http.server
    import threading

    from serving.images import decode_image
    from serving.protocol import ApiError

    colour_image(tmp_path / "g.png", "green")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(ApiError, match="--allow-remote-images"):
            decode_image(url + "/g.png", "messages.0")
        image, size = decode_image(url + "/g.png", "messages.0", allow_remote=True)
        assert image.getpixel((0, 0)) == COLOURS["green"] and size > 0
        with pytest.raises(ApiError, match="Cannot fetch the image") as missing:
            decode_image(url + "/nope.png", "messages.0", allow_remote=True)
        assert missing.value.code == "image_fetch_failed"
    finally:
        server.shutdown()


def test_image_size_limits(monkeypatch, tmp_path):
    from serving import images
    from serving.protocol import ApiError

    png = colour_image(tmp_path / "big.png", "red", size=64)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ApiError, match="64x64, over 1000 pixels"):
        images.decode_image(_data_url(png), "messages.0")
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 50)
    with pytest.raises(ApiError, match="over 50 bytes"):
        images.decode_image(_data_url(png), "messages.0")


@pytest.mark.e2e
def test_training_a_multimodal_model_on_bad_images_fails_cleanly(llava_source, tmp_path, capsys):
    import train_lora

    model_dir = tmp_path / "m"
    shutil.copytree(llava_source, model_dir / "model")
    (tmp_path / "notes.png").write_text("plain text")
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"image": "notes.png", "caption": "c"}]))
    assert train_lora.main(["--model-dir", str(model_dir), "--data", str(data), "--no-tensorboard"]) == 1
    assert f"Error: {data}, record 1: {tmp_path / 'notes.png'} is not an image" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.e2e
def test_train_sh_and_start_sh_with_images(llava_source, tmp_path):
    """The user's commands as subprocesses: install DIR, ./train.sh on image data, ./start.sh with the openai
    client, ./start.sh --chat with /image."""
    import subprocess

    from conftest import run_cli
    from openai import OpenAI
    from serving_helpers import free_port
    from test_start_sh import _start, _stop, _wait_healthy

    assert run_cli("install", str(llava_source), "--name", "llava-e2e").exit_code == 0
    model_dir = tmp_path / "models" / "llava-e2e"
    data = colour_dataset(tmp_path / "data")
    trained = subprocess.run([str(model_dir / "train.sh"), "--data", str(data), "--epochs", "6", "--validation-split",
                              "0", "--no-tensorboard", "--seed", "1"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=600)
    assert trained.returncode == 0 and "Multimodal LoRA: the language model" in trained.stdout, trained.stdout
    port = free_port()
    process = _start(model_dir, "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, 120)
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for colour in COLOURS:
            picture = colour_image(tmp_path / f"{colour}.png", colour, jitter=8)
            assert _ask(client, "llava-e2e:lora", _data_url(picture)) == colour
    finally:
        _stop(process)
    picture = colour_image(tmp_path / "yellow.png", "yellow", jitter=-6)
    chat = subprocess.run([str(model_dir / "start.sh"), "--chat", "--temperature", "0"], text=True, timeout=300,
                          input=f"/image {picture}\n{QUESTION}\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert chat.returncode == 0 and "> yellow\n" in chat.stdout, chat.stdout
