"""Issue 21's server items: a hostile adapter chat template is a 400 naming the adapter, does not starve the base
model, and stops when its client leaves; a short request does not wait for a whole long one; a taken port is one
sentence before anything says "Serving"."""

import shutil
import socket
import threading
import time

import httpx2 as httpx
import pytest
from serving_helpers import load_state, running_server

HOSTILE = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"
HELLO = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def hostile_server(builtin_model_dir, tmp_path_factory):
    from conftest import copy_installed
    from export_helpers import add_adapter

    root = copy_installed(builtin_model_dir, tmp_path_factory.mktemp("hostile") / "m")
    adapter = add_adapter(root)
    hostile = shutil.copytree(adapter, root.parent / "hostile")
    (hostile / "chat_template.jinja").write_text(HOSTILE)
    shutil.rmtree(adapter)
    state = load_state(root, named={"evil": hostile})
    with running_server(state) as url:
        yield url


def _render_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "render"]


def _wait_for_no_render_threads() -> None:
    for _ in range(200):  # the threads are interrupted within milliseconds of the decision; bound the wait
        if not _render_threads():
            return
        time.sleep(0.05)
    raise AssertionError("a hostile render is still running")


def test_a_hostile_adapter_template_is_a_400_naming_it_and_the_base_model_still_answers(hostile_server):
    results, order = {}, []

    def ask(name, model):
        results[name] = httpx.post(hostile_server + "/v1/chat/completions", json={**HELLO, "model": model},
                                   timeout=120)
        order.append(name)

    threads = [threading.Thread(target=ask, args=(f"evil{i}", "evil")) for i in range(5)]
    threads.append(threading.Thread(target=ask, args=("base", "m")))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    assert results["base"].status_code == 200, results["base"].text
    assert order.index("base") < 2, order  # not behind the hostile renders: they queue on their own route
    for index in range(5):
        error = results[f"evil{index}"]
        assert error.status_code == 400
        body = error.json()["error"]
        assert body["code"] == "template_budget_exceeded" and "adapter evil" in body["message"]
    _wait_for_no_render_threads()


def test_a_hostile_render_stops_when_its_client_leaves(hostile_server, monkeypatch):
    from serving import budget

    monkeypatch.setattr(budget, "RENDER_SECONDS", 3600.0)  # only the disconnect can stop it now
    with pytest.raises(httpx.TimeoutException):
        httpx.post(hostile_server + "/v1/chat/completions", json={**HELLO, "model": "evil"}, timeout=1.5)
    _wait_for_no_render_threads()


def test_a_short_request_does_not_wait_for_a_whole_long_one(builtin_model_dir):
    state = load_state(builtin_model_dir, lora=False)  # one generation at a time on the CPU (max_concurrency 1)
    assert state.engine._gate._slots == 1
    with running_server(state) as url:
        events = []
        long_started = threading.Event()

        def long():
            body = {**HELLO, "max_tokens": 300, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as response:
                for _line in response.iter_lines():
                    long_started.set()
            events.append("long done")

        worker = threading.Thread(target=long)
        worker.start()
        assert long_started.wait(120)
        short = httpx.post(url + "/v1/chat/completions", json=HELLO, timeout=300)
        events.append("short done")
        worker.join(300)
        assert short.status_code == 200
        assert events == ["short done", "long done"]


def test_a_taken_port_is_said_in_one_sentence_before_serving(model_dir):
    from serving_helpers import start_sh

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = start_sh(model_dir, "--port", str(port))
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "Serving" not in output
    assert output.strip().splitlines()[-1] == (f"Error: Port {port} on 127.0.0.1 is already in use: stop what is "
                                               "listening there or pick another with --port.")
