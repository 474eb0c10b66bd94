"""./start.sh as users run it: startup log naming the adapter, refusal of a foreign adapter,
--no-lora / --load-lora, --help, --chat, vLLM hand-off checks, and the web page in headless Chromium."""

import json
import os
import shutil
import subprocess

import openai
import pytest
from facts import FACTS
from serving_helpers import (
    free_port,
    greedy_chat_page,
    headless_browser,
    load_state,
    running_server,
    start_sh,
    stop,
    wait_healthy,
)

QUESTION, ANSWER = FACTS[0]["question"], FACTS[0]["answer"]


def test_start_sh_serves_the_tuned_model_and_says_so(tuned_model_dir):
    port = free_port()
    process = start_sh(tuned_model_dir, "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="tuned-model:lora", temperature=0,
                                               messages=[{"role": "user", "content": QUESTION}])
        assert reply.choices[0].message.content == ANSWER
    finally:
        output = stop(process)
    assert f"Adapter: {tuned_model_dir / 'lora'}, rank 8, alpha 16, base model builtin:tiny-chat" in output
    assert f"at http://127.0.0.1:{port}/v1" in output and "Traceback" not in output


def test_start_sh_refuses_an_adapter_of_another_base_model(tuned_model_dir, tmp_path):
    foreign = tmp_path / "foreign-lora"
    shutil.copytree(tuned_model_dir / "lora", foreign)
    info = json.loads((foreign / "adapter_info.json").read_text())
    info.update(base_model="meta-llama/Llama-3-8B", base_model_path="/elsewhere/model")
    (foreign / "adapter_info.json").write_text(json.dumps(info))
    config = json.loads((foreign / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "meta-llama/Llama-3-8B"
    (foreign / "adapter_config.json").write_text(json.dumps(config))
    result = subprocess.run([str(tuned_model_dir / "start.sh"), "--load-lora", str(foreign)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "was trained on meta-llama/Llama-3-8B, not on this model (builtin:tiny-chat)" in result.stderr
    missing = subprocess.run([str(tuned_model_dir / "start.sh"), "--load-lora", str(tmp_path / "nope")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no adapter_config.json" in missing.stderr
    both = subprocess.run([str(tuned_model_dir / "start.sh"), "--no-lora", "--load-lora", str(foreign)],
                          capture_output=True, text=True, timeout=60)
    assert both.returncode == 1 and "contradict" in both.stderr


def test_start_sh_help_lists_the_options(tuned_model_dir):
    result = subprocess.run([str(tuned_model_dir / "start.sh"), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("--port", "--host", "--api-key", "--dtype", "--device", "--quantization", "--cpu-offload",
                 "--max-concurrency", "--engine", "--chat", "--no-lora", "--load-lora", "--gguf-quant", "--threads",
                 "--batching"):
        assert flag in result.stdout, flag


def test_quantization_and_vllm_need_a_gpu(tuned_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this check is about machines without a GPU")
    quantized = subprocess.run([str(tuned_model_dir / "start.sh"), "--chat", "--quantization", "4bit"],
                               capture_output=True, text=True, input="", timeout=120)
    assert quantized.returncode == 1 and "needs a CUDA GPU" in quantized.stderr
    vllm = subprocess.run([str(tuned_model_dir / "start.sh"), "--engine", "vllm"], capture_output=True, text=True,
                          timeout=60)
    assert vllm.returncode == 1 and "--engine vllm needs" in vllm.stderr


def test_vllm_command_passes_the_adapter_and_its_rank(tuned_model_dir):
    from serving.cli import build_router, resolve_adapter
    from serving.config import ServeConfig
    from serving.engines.vllm_engine import vllm_command

    cfg = ServeConfig(model_dir=tuned_model_dir, port=9000, api_key="k",
                      lora=[f"second={tuned_model_dir / 'lora'}"]).apply_install_defaults()
    command = vllm_command(cfg, build_router(cfg, resolve_adapter(cfg)))
    assert command[:3] == ["vllm", "serve", str(tuned_model_dir / "model")]
    assert "--enable-lora" in command and command[command.index("--max-lora-rank") + 1] == "8"
    modules = command[command.index("--lora-modules") + 1:]
    assert modules == [f"tuned-model:lora={tuned_model_dir / 'lora'}", f"second={tuned_model_dir / 'lora'}"]
    assert command[command.index("--max-loras") + 1] == "2"
    assert "k" not in command  # the key goes through the environment, not the visible command line
    assert "--max-num-seqs" not in command  # vLLM batches as many as it sees fit unless --max-concurrency is given


def test_terminal_chat(tuned_model_dir):
    result = subprocess.run([str(tuned_model_dir / "start.sh"), "--chat", "--temperature", "0"],
                            input=f"{QUESTION}\n/model\n/model nope\n/model tuned-model\n/clear\n/exit\n",
                            capture_output=True, text=True, timeout=120, env={**os.environ, "LLM_API_KEY": ""})
    assert result.returncode == 0, result.stderr
    assert f"Chatting with tuned-model:lora (adapter {tuned_model_dir / 'lora'})" in result.stdout
    assert "(chat cleared)" in result.stdout
    assert "* tuned-model:lora (adapter" in result.stdout and "  tuned-model (base model)" in result.stdout
    assert "The model 'nope' does not exist" in result.stdout
    assert "(now chatting with tuned-model (base model))" in result.stdout
    assert f"> {ANSWER}\n" in result.stdout


def test_web_page_chats_with_streaming(tuned_model_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    state = load_state(tuned_model_dir)
    with running_server(state) as url:
        browser = headless_browser()
        try:
            wait = greedy_chat_page(browser, url)
            box = browser.find_element(By.ID, "input")
            box.send_keys(QUESTION)
            box.send_keys(Keys.ENTER)
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-state='done']"))
            answer = browser.find_element(By.CSS_SELECTOR, ".msg.assistant")
            assert answer.text == ANSWER
            assert answer.find_elements(By.XPATH, "./*") == []  # text only, no injected markup
            assert browser.find_element(By.CSS_SELECTOR, ".msg.user").text == QUESTION
            browser.find_element(By.ID, "clear").click()
            assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
            picker = Select(browser.find_element(By.ID, "model-select"))
            assert [o.text for o in picker.options] == ["tuned-model:lora", "tuned-model"]
            picker.select_by_value("tuned-model")  # the base model, which was never taught the answer
            assert browser.find_element(By.ID, "model").text == "base model"
            box.send_keys(QUESTION)
            box.send_keys(Keys.ENTER)
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, ".msg.assistant[data-state='done']"))
            assert browser.find_element(By.CSS_SELECTOR, ".msg.assistant").text != ANSWER
            browser.find_element(By.ID, "clear").click()
            assert "<script src" not in browser.page_source and "https://" not in browser.page_source
        finally:
            browser.quit()
