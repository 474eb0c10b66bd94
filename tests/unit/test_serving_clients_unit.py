"""start.sh v3's pieces without a model: origins (CORS/CSRF), forced tool-call schemas, the parameters clients send,
the render budget, fair turns in the gate, the port check and the serve line after training."""

import asyncio
import json
import threading
import time

import pytest
from pydantic import ValidationError

from serving import origins
from serving.budget import BudgetExceeded, bounded, check_size
from serving.engines.gate import AdapterGate
from serving.protocol import ApiError, ChatRequest, CompletionRequest
from serving.tools import forced_call_schema, parse_forced_calls

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}


def test_loopback_pages_and_the_servers_own_origin_are_allowed_others_only_when_listed():
    allowed = origins.parse_origins(None)
    for origin in ("http://localhost:5173", "http://127.0.0.1", "https://[::1]:8443", "http://app.localhost:3000"):
        assert origins.origin_allowed(origin, allowed, "127.0.0.1:8000"), origin
    assert not origins.origin_allowed("https://evil.example", allowed, "127.0.0.1:8000")
    assert not origins.origin_allowed("null", allowed, "127.0.0.1:8000")
    assert origins.origin_allowed("http://192.168.1.5:8000", allowed, "192.168.1.5:8000")  # the chat page itself
    listed = origins.parse_origins("https://*.example.com, https://app.test")
    assert origins.origin_allowed("https://a.example.com", listed, "x")
    assert origins.origin_allowed("https://app.test", listed, "x")
    assert not origins.origin_allowed("https://example.org", listed, "x")
    assert origins.origin_allowed("https://anything.org", origins.parse_origins("*"), "x")
    with pytest.raises(ValueError, match="is not an origin"):
        origins.parse_origins("example.com")
    with pytest.raises(ValueError, match="is not an origin"):
        origins.parse_origins("https://example.com/path")


def test_only_json_content_types_count_as_json():
    assert origins.is_json("application/json") and origins.is_json("application/json; charset=utf-8")
    assert origins.is_json("application/vnd.api+json")
    for kind in (None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        assert not origins.is_json(kind)


def test_forced_call_schema_names_the_functions_and_limits_parallel_calls():
    named = forced_call_schema([WEATHER, TIME], "get_weather", parallel=True)
    assert named["items"]["properties"]["name"] == {"const": "get_weather"}
    assert named["items"]["properties"]["arguments"] == WEATHER["function"]["parameters"]
    assert named["maxItems"] == 1  # a named function is one call, as OpenAI answers it
    assert "maxItems" not in forced_call_schema([WEATHER, TIME], "*", parallel=True)
    required = forced_call_schema([WEATHER, TIME], "*", parallel=False)
    assert [o["properties"]["name"]["const"] for o in required["items"]["anyOf"]] == ["get_weather", "get_time"]
    assert required["items"]["anyOf"][1]["properties"]["arguments"] == {"type": "object"}
    assert required["maxItems"] == 1 and required["minItems"] == 1


def test_forced_answers_parse_into_calls_and_a_cut_answer_stays_text():
    content, calls = parse_forced_calls('[{"name": "get_weather", "arguments": {"city": "Paris"}}]')
    assert content == "" and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert parse_forced_calls('[{"name": "get_weather", "argu') == ('[{"name": "get_weather", "argu', [])


def _chat(**fields):
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **fields})


def test_the_fields_clients_send_are_accepted_and_sampling_extras_validated():
    request = _chat(store=True, metadata={"a": "b"}, user="u", prompt_cache_key="k", safety_identifier="s",
                    service_tier="flex", verbosity="low", stream=True,
                    stream_options={"include_usage": True, "include_obfuscation": False},
                    top_k=-1, min_p=0.05, repetition_penalty=1.1, chat_template_kwargs={"enable_thinking": False})
    assert request.include_usage and request.top_k == -1 and request.chat_template_kwargs == {"enable_thinking": False}
    for bad in ({"top_k": -2}, {"min_p": 1.5}, {"repetition_penalty": 0}, {"nonsense": 1}):
        with pytest.raises(ValidationError):
            _chat(**bad)
    with pytest.raises(ApiError, match="cannot set 'messages'"):
        _chat(chat_template_kwargs={"messages": []})


def test_tool_choice_required_and_named_are_accepted_unknown_names_refused():
    assert _chat(tools=[WEATHER], tool_choice="required").forced_tool == "*"
    named = _chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert named.forced_tool == "get_weather"
    assert _chat(tools=[WEATHER], tool_choice="auto").forced_tool is None
    with pytest.raises(ApiError, match="not in tools"):
        _chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "other"}})


def test_completion_prompts_as_lists_token_ids_and_scoring():
    assert CompletionRequest.model_validate({"prompt": "a"}).prompts == ["a"]
    assert CompletionRequest.model_validate({"prompt": ["a", "b"]}).prompts == ["a", "b"]
    assert CompletionRequest.model_validate({"prompt": [1, 2]}).prompts == [[1, 2]]
    assert CompletionRequest.model_validate({"prompt": [[1], [2, 3]]}).prompts == [[1], [2, 3]]
    scoring = CompletionRequest.model_validate({"prompt": [1, 2], "echo": True, "logprobs": 1, "max_tokens": 0})
    assert scoring.max_tokens == 0
    with pytest.raises(ApiError, match="max_tokens 0 generates nothing"):
        CompletionRequest.model_validate({"prompt": "a", "max_tokens": 0})
    for bad in ([], [""], [[-1]], [[]]):
        with pytest.raises(ValidationError):
            CompletionRequest.model_validate({"prompt": bad})


def test_a_render_that_overruns_its_budget_is_stopped():
    finished = threading.Event()

    def forever():
        while True:  # a template's nested loop: pure Python, interruptible
            pass

    def quick():
        finished.set()
        return 42

    async def scenario():
        started = time.monotonic()
        with pytest.raises(BudgetExceeded):
            await bounded(forever, seconds=0.3)
        assert time.monotonic() - started < 5
        assert await bounded(quick) == 42

    asyncio.run(scenario())
    assert finished.is_set()
    for thread in [t for t in threading.enumerate() if t.name == "render"]:
        thread.join(5)
        assert not thread.is_alive()  # the looping thread was stopped, not left spinning
    with pytest.raises(BudgetExceeded):
        check_size("x" * 6401, 100)
    check_size("x" * 6400, 100)


def test_a_long_generation_lets_a_waiting_request_run_between_its_tokens():
    gate = AdapterGate(1, lambda key: None)
    order = []

    def long():
        with gate.admit(None, threading.Event()) as turn:
            for step in range(40):
                order.append(("long", step))
                turn.share()
                time.sleep(0.002)

    def short():
        with gate.admit(None, threading.Event()):
            order.append(("short", 0))

    first = threading.Thread(target=long)
    first.start()
    while not order:
        time.sleep(0.001)
    second = threading.Thread(target=short)
    second.start()
    first.join(10)
    second.join(10)
    position = order.index(("short", 0))
    assert position < len(order) - 1, "the short request waited for the whole long one"


def test_a_taken_port_is_one_sentence_before_serving(tmp_path):
    import socket

    from serving.cli import check_port_free
    from serving.config import ServeConfigError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServeConfigError, match=f"Port {port} on 127.0.0.1 is already in use"):
            check_port_free("127.0.0.1", port)


def test_the_serve_line_after_training_names_the_adapter_it_wrote(tmp_path):
    from training.report import serve_command

    model = tmp_path / "model-dir"
    assert serve_command({"hyperparameters": {"output": None}}, model) == "Serve it:   ./start.sh   (./lora is loaded)"
    assert "./start.sh" in serve_command({"hyperparameters": {"output": str(model / "lora")}}, model)
    line = serve_command({"hyperparameters": {"output": str(tmp_path / "my adapter")}}, model)
    assert line == f"Serve it:   {model / 'start.sh'} --load-lora '{tmp_path / 'my adapter'}'"


def test_vllm_gets_exact_origins_its_own_loopback_ones_by_default():
    from types import SimpleNamespace

    from serving.config import ServeConfigError
    from serving.engines.vllm_engine import vllm_origins

    def origins_for(value):
        return json.loads(vllm_origins(SimpleNamespace(allowed_origins=value, port=9000)))

    assert origins_for(None) == ["http://localhost:9000", "http://127.0.0.1:9000"]
    assert origins_for("https://a.example, *") == ["https://a.example", "*"]
    with pytest.raises(ServeConfigError, match="vLLM matches exact origins only"):
        origins_for("https://*.example.com")
