"""The main proof of multimodal support, with the tiny LLaVA installed by `llm-installer install DIR` and
trained on solid-colour images labelled with their colour: the served model names the colour of new images
(a model that ignored the images could name at most one colour for all of them) through the openai client,
the web page and `--chat /image`, and so does the merged export; bad image requests are clean 400s."""

from __future__ import annotations

import io

import pytest
from tiny_vision import COLOURS, QUESTION, colour_dataset, colour_image, data_url

pytest_plugins = ["vision_fixtures"]  # llava_source, trained_llava (session-scoped)


def _ask(client, model, image_url):
    answer = client.chat.completions.create(model=model, temperature=0, max_tokens=4, messages=[
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                     {"type": "text", "text": QUESTION}]}])
    return answer.choices[0].message.content.strip()


def test_trained_model_names_the_colour_of_new_images_over_the_api(trained_llava, tmp_path):
    from openai import OpenAI
    from serving_helpers import load_state, running_server

    log = (trained_llava / "train-log.txt").read_text()
    assert "Images: 16 in 16 of 16 examples, sizes 32x32 to 32x32" in log and "rows are not packed for this model" in log
    assert "vision tower (vision_tower) stays frozen" in log
    state = load_state(trained_llava)
    assert state.max_body_bytes == 28_000_000  # room for images by default
    new = {colour: data_url(colour_image(tmp_path / f"{colour}.png", colour, jitter=6)) for colour in COLOURS}
    with running_server(state) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused")
        answers = {colour: _ask(client, "tiny-llava:lora", image) for colour, image in new.items()}
        assert answers == {colour: colour for colour in COLOURS}
        base = {_ask(client, "tiny-llava", image) for image in new.values()}
        assert base != set(COLOURS)  # the untrained model does not know colours


def test_web_page_attaches_images(trained_llava, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from serving_helpers import greedy_chat_page, headless_browser, load_state, running_server

    with running_server(load_state(trained_llava)) as url:
        browser = headless_browser()
        try:
            wait = greedy_chat_page(browser, url)
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


def test_merged_export_carries_the_processor(trained_llava, tmp_path):
    import torch
    from conftest import run_cli
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    refused = run_cli("export", str(trained_llava), "--format", "gguf")
    assert refused.exit_code == 1 and "--format gguf of a multimodal model is not supported" in refused.output
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

    image = {"type": "image_url", "image_url": {"url": data_url(png)}}
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


@pytest.mark.slow
def test_train_sh_and_start_sh_with_images(llava_source, tmp_path):
    """The user's commands as subprocesses: install DIR, ./train.sh on image data, ./start.sh with the openai
    client, ./start.sh --chat with /image."""
    import subprocess

    from conftest import run_cli
    from openai import OpenAI
    from serving_helpers import free_port, start_sh, stop, wait_healthy

    assert run_cli("install", str(llava_source), "--name", "llava-e2e").exit_code == 0
    model_dir = tmp_path / "models" / "llava-e2e"
    data = colour_dataset(tmp_path / "data")
    trained = subprocess.run([str(model_dir / "train.sh"), "--data", str(data), "--epochs", "6", "--validation-split",
                              "0", "--no-tensorboard", "--seed", "1"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=600)
    assert trained.returncode == 0 and "Multimodal LoRA: the language model" in trained.stdout, trained.stdout
    port = free_port()
    process = start_sh(model_dir, "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, 120)
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for colour in COLOURS:
            picture = colour_image(tmp_path / f"{colour}.png", colour, jitter=8)
            assert _ask(client, "llava-e2e:lora", data_url(picture)) == colour
    finally:
        stop(process)
    picture = colour_image(tmp_path / "yellow.png", "yellow", jitter=-6)
    chat = subprocess.run([str(model_dir / "start.sh"), "--chat", "--temperature", "0"], text=True, timeout=300,
                          input=f"/image {picture}\n{QUESTION}\n", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert chat.returncode == 0 and "> yellow\n" in chat.stdout, chat.stdout


def test_eval_refuses_image_examples_in_one_sentence(trained_llava, tmp_path):
    from conftest import run_cli
    from tiny_vision import colour_dataset

    result = run_cli("eval", str(trained_llava), "--data", str(colour_dataset(tmp_path, copies=1)))
    assert result.exit_code == 1 and "has image examples" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
