"""Running the server in-process on a free port for tests (and the serving benchmark)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(state, host: str = "127.0.0.1"):
    """Serve `state` with uvicorn in a thread; yields the base URL; stops it on exit."""
    import uvicorn

    from serving.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host=host, port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def load_state(model_dir, *, lora: bool = True, api_key: str | None = None, max_concurrency: int = 0,
               loopback: bool = True, named: dict | None = None, engine: str = "transformers", batching: str = "auto"):
    """A ServerState with the engine loaded from an installed model directory (`named`: --lora NAME=PATH)."""
    from serving.cli import build_router, build_state, load_engine, resolve_adapter
    from serving.config import ServeConfig

    cfg = ServeConfig(model_dir=model_dir, no_lora=not lora, api_key=api_key, max_concurrency=max_concurrency,
                      lora=[f"{name}={path}" for name, path in (named or {}).items()],
                      engine=engine, batching=batching).validate().apply_install_defaults()
    router = build_router(cfg, resolve_adapter(cfg))
    state = build_state(cfg, router)
    state.loopback = loopback
    state.engine = load_engine(cfg, router)
    return state


class ScriptedEngine:
    """Stands in for an Engine where what matters is what the server does with the model's text: `stream`
    yields `script` (a string, or a function of the rendered messages) in small pieces."""

    def __init__(self, script, context_length: int = 4096):
        from serving.engines.gate import AdapterGate

        self.script, self.context_length = script, context_length
        self.base_template = "{{ tools }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
        self.stats = {"waiting": 0, "active": 0, "completed": 0, "cancelled": 0}
        self.prompts: list[tuple[list[dict], list[dict] | None]] = []
        self.tokenizer = _ScriptedTokenizer()
        self._gate = AdapterGate(1, lambda key: None)

    def chat_template(self, key=None):
        return self.base_template

    def chat_prompt(self, messages, key=None, tools=None, images=None, template_kwargs=None):
        self.prompts.append((messages, tools))
        self.template_kwargs = template_kwargs
        return [1, 2, 3]

    def text_prompt(self, prompt):
        return [1, 2, 3]

    vocab_size = 1000
    supports_logprobs = False
    supports_embeddings = False
    name = "scripted"

    def compile_format(self, output):
        """Records the constraint (the script plays the model that obeys it)."""
        self.constraints = getattr(self, "constraints", []) + [output]
        return output

    def stream(self, prompt_ids, params, generation, key=None):
        from serving.engines.decoding import Piece

        text = self.script(self.prompts[-1][0]) if callable(self.script) else self.script
        with self._gate.admit(key, generation.cancel):
            for start in range(0, len(text), 3):
                yield Piece(text[start:start + 3])
        generation.completion_tokens = len(text) // 3 + 1
        generation.finish_reason = "stop"


class _ScriptedTokenizer:
    def __len__(self):
        return 1000

    def get_vocab(self):
        return {}


# --- ./start.sh as a subprocess, and the chat page in headless Chromium -----------------------------------


def start_sh(model_dir, *args, **kwargs):
    """./start.sh running in the background, its output (stderr included) on .stdout."""
    import subprocess

    return subprocess.Popen([str(model_dir / "start.sh"), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **kwargs)


def wait_healthy(url, process, seconds=60):
    import httpx2 as httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server never became healthy")


def stop(process):
    """Terminate a start.sh process; returns its output."""
    process.terminate()
    output, _ = process.communicate(timeout=30)
    return output


def greedy_chat_page(browser, url: str):
    """Open the chat page once the adapter is listed, at temperature 0; returns the page's 60 s waiter."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: "adapter" in b.find_element(By.ID, "model").text)
    temperature = browser.find_element(By.ID, "temperature")
    temperature.clear()
    temperature.send_keys("0")
    return wait


def headless_browser():
    """Headless Chromium through chromedriver; skips the test where they are missing (fails where CI requires them)."""
    import os
    import shutil

    import pytest

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("LLM_INSTALLER_REQUIRE_BROWSER"):
            raise AssertionError("chromium and chromedriver are required (CI installs them)")
        pytest.skip("chromium/chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)
