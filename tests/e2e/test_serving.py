"""start.sh's server with the real openai client: chat, streaming, completions, models, the adapter
changing answers, auth, the Host guard, bad requests, concurrency and disconnects."""

import json
import threading
import time

import httpx2 as httpx
import openai
import pytest
from facts import FACTS
from serving_helpers import load_state, running_server

QUESTION, ANSWER = FACTS[2]["question"], FACTS[2]["answer"]


@pytest.fixture(scope="module")
def tuned_server(tuned_model_dir):
    state = load_state(tuned_model_dir)
    with running_server(state) as url:
        yield url, state


@pytest.fixture
def client(tuned_server):
    return openai.OpenAI(base_url=tuned_server[0] + "/v1", api_key="unused", max_retries=0)


def _ask(client, question=QUESTION, model="tuned-model:lora", **extra):
    extra.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **extra)


def test_chat_answers_with_the_trained_adapter(client):
    reply = _ask(client)
    assert reply.choices[0].message.content == ANSWER
    assert reply.choices[0].finish_reason == "stop" and reply.object == "chat.completion"
    assert reply.usage.prompt_tokens > 0 and reply.usage.total_tokens == reply.usage.prompt_tokens + \
        reply.usage.completion_tokens


def test_chat_streaming_chunks(client):
    chunks = list(_ask(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stop_sequence_and_length_limit(client):
    cut = _ask(client, stop=["owl"])
    assert cut.choices[0].message.content == ANSWER.split("owl")[0] and cut.choices[0].finish_reason == "stop"
    short = _ask(client, max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2


def test_text_completions_plain_and_streaming(client):
    plain = client.completions.create(model="tuned-model", prompt="The mascot", max_tokens=5, temperature=0)
    assert plain.object == "text_completion" and plain.usage.completion_tokens <= 5 and plain.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tuned-model", prompt="The mascot", max_tokens=5, temperature=0, stream=True) if c.choices)
    assert streamed == plain.choices[0].text


def test_models_lists_the_adapter(client, tuned_model_dir):
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"tuned-model", "tuned-model:lora"}
    adapter = cards["tuned-model:lora"].model_extra["adapter"]
    assert adapter["rank"] == 8 and adapter["base_model"] == "builtin:tiny-chat"
    assert adapter["path"] == str(tuned_model_dir / "lora")


def test_seeded_sampling_is_repeatable(client):
    first, second = (_ask(client, temperature=1.5, seed=3, max_tokens=12).choices[0].message.content
                     for _ in range(2))
    assert first == second


def test_base_model_without_lora_does_not_know_the_answer(tuned_model_dir):
    state = load_state(tuned_model_dir, lora=False)
    with running_server(state) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        assert _ask(client, model="tuned-model").choices[0].message.content != ANSWER
        assert [m.id for m in client.models.list().data] == ["tuned-model"]
        with pytest.raises(openai.NotFoundError):
            _ask(client, model="tuned-model:lora")


BAD_REQUESTS = [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    (json.dumps({"messages": []}).encode(), 400, "invalid_value"),
    (json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}).encode(), 400, "invalid_value"),
    (json.dumps({"messages": "hello"}).encode(), 400, "invalid_value"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(), 400,
     "invalid_value"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}).encode(), 400, "invalid_value"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}).encode(), 400,
     "context_length_exceeded"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 17}).encode(), 400, "invalid_value"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 0}).encode(), 400, "invalid_value"),
    (json.dumps({"messages": [{"role": "system", "content": "only a system prompt"}]}).encode(), 400,
     "no_user_message"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 2_000_000}]}).encode(), 413, "body_too_large"),
    # issue 14 item 9: these were 500s
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "seed": 2**70}).encode(), 400, "invalid_value"),
    (json.dumps({"messages": [{"role": "user", "content": "hi \ud800"}]}).encode(), 400, "invalid_json"),
    (b"[" * 100_000, 400, "invalid_json"),
    (b'{"messages": ' + b"[" * 100_000, 400, "invalid_json"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}],
                 "tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": [[[[[[[[]]]]]]]]}}}],
                 "metadata": {"k": json.dumps([[[]]])}}).encode()[:-1] + b', "x": ' + b"[" * 900 + b"]" * 900 + b"}",
     400, "unrecognized_argument"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_REQUESTS)
def test_bad_requests_get_openai_shaped_4xx(tuned_server, body, status, code):
    response = httpx.post(tuned_server[0] + "/v1/chat/completions", content=body,
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
    assert "Traceback" not in response.text


STRICT_TEMPLATE = ("{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('Conversations must start with "
                   "a user turn') }}{% endif %}{% for m in messages %}{{ m['content'] }}\n{% endfor %}")


def test_messages_the_chat_template_rejects_are_a_400(tuned_server):
    url, state = tuned_server
    engine = state.engine
    saved, engine.base_template = engine.base_template, STRICT_TEMPLATE
    try:
        body = {"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]}
        response = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
    finally:
        engine.base_template = saved
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_messages" and "must start with a user turn" in error["message"]


def test_unknown_route_and_wrong_method(tuned_server):
    assert httpx.get(tuned_server[0] + "/v1/nope").json()["error"]["code"] == "not_found"
    assert httpx.get(tuned_server[0] + "/v1/chat/completions").status_code == 405


def test_host_guard_refuses_foreign_host_names(tuned_server):
    url = tuned_server[0]
    assert httpx.get(url + "/v1/models", headers={"Host": "attacker.example"}).status_code == 403
    assert httpx.get(url + "/v1/models", headers={"Host": "attacker.example:8000"}).status_code == 403
    for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000"):
        assert httpx.get(url + "/v1/models", headers={"Host": host}).status_code == 200, host


def test_api_key_required_everywhere_but_health(tuned_model_dir):
    state = load_state(tuned_model_dir, api_key="s3cret")
    with running_server(state) as url:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert _ask(good).choices[0].message.content == ANSWER
        assert httpx.get(url + "/health").status_code == 200
        page = httpx.get(url + "/")
        assert page.status_code == 401 and page.headers["www-authenticate"].startswith("Basic")
        assert httpx.get(url + "/", auth=("any", "s3cret")).status_code == 200


def test_health_is_503_while_loading_and_requests_wait(tuned_model_dir):
    from serving.app import ServerState
    from serving.router import Router

    state = ServerState(router=Router("tuned-model"))
    with running_server(state) as url:
        assert httpx.get(url + "/health").status_code == 503
        response = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 503 and response.json()["error"]["code"] == "model_loading"
        state.engine = load_state(tuned_model_dir).engine
        assert httpx.get(url + "/health").json()["status"] == "ok"


def test_concurrent_clients_get_whole_uninterleaved_answers(tuned_server, client):
    answers, errors = [], []

    def one(question):
        try:
            stream = _ask(client, question, stream=True)
            answers.append((question, "".join(c.choices[0].delta.content or "" for c in stream if c.choices)))
        except Exception as exc:  # collected: the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(FACTS[i % len(FACTS)]["question"],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(answers) == 8
    expected = {f["question"]: f["answer"] for f in FACTS}
    assert all(answer == expected[question] for question, answer in answers)


def test_client_disconnect_stops_generation(tuned_model_dir):
    state = load_state(tuned_model_dir, lora=False)
    with running_server(state) as url:
        body = {"prompt": "Once upon a time", "max_tokens": 1500, "temperature": 1.0, "stream": True,
                "ignore_eos": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
        deadline = time.monotonic() + 20
        while state.engine.stats["cancelled"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.engine.stats["cancelled"] == 1 and state.engine.stats["active"] == 0
