"""start.sh v3 with the real openai client and raw HTTP, on a scripted engine (what the server does with the
model's text): forced tool calls, the fields clients send, chat_template_kwargs, the routes, CORS and CSRF."""

import json

import httpx2 as httpx
import openai
import pytest
from serving_helpers import ScriptedEngine, running_server

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
FORCED = '[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]'
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture
def scripted():
    from serving.app import ServerState
    from serving.origins import parse_origins
    from serving.router import Router

    def serve(script=FORCED, api_key=None, allowed=None):
        engine = ScriptedEngine(script)
        state = ServerState(router=Router("fake"), engine=engine, api_key=api_key,
                            allowed_origins=parse_origins(allowed))
        return engine, running_server(state)

    return serve


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_forced_tool_calls_required_named_and_one_at_a_time(scripted, stream):
    engine, server = scripted()
    with server as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)

        def calls(**extra):
            if not stream:
                reply = client.chat.completions.create(model="fake", messages=MESSAGES, tools=[WEATHER, TIME], **extra)
                return reply.choices[0].finish_reason, reply.choices[0].message.content, \
                    reply.choices[0].message.tool_calls
            chunks = [c for c in client.chat.completions.create(model="fake", messages=MESSAGES, tools=[WEATHER, TIME],
                                                                stream=True, **extra) if c.choices]
            deltas = [c.choices[0].delta for c in chunks]
            return chunks[-1].choices[0].finish_reason, "".join(d.content or "" for d in deltas) or None, \
                [call for d in deltas for call in d.tool_calls or []]

        finish, content, made = calls(tool_choice="required")
        assert finish == "tool_calls" and not content
        assert [(c.function.name, json.loads(c.function.arguments)) for c in made] == [
            ("get_weather", {"city": "Paris"}), ("get_time", {})]
        output = engine.constraints[-1]
        assert output.kind == "tool_call" and "maxItems" not in output.schema
        assert len(output.schema["items"]["anyOf"]) == 2
        _finish, _content, made = calls(tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                        parallel_tool_calls=False)
        assert [c.function.name for c in made] == ["get_weather"]
        output = engine.constraints[-1]
        assert output.schema["maxItems"] == 1 and output.schema["items"]["properties"]["name"]["const"] == "get_weather"


def test_the_fields_real_clients_send_are_accepted_and_template_kwargs_reach_the_template(scripted):
    engine, server = scripted("Hello.")
    with server as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="fake", messages=MESSAGES, store=False, metadata={"run": "1"}, user="u1", prompt_cache_key="k",
            safety_identifier="s", service_tier="auto", verbosity="low",
            extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1,
                        "chat_template_kwargs": {"enable_thinking": False}})
        assert reply.choices[0].message.content == "Hello."
        assert engine.template_kwargs == {"enable_thinking": False}
        streamed = list(client.chat.completions.create(model="fake", messages=MESSAGES, stream=True,
                                                       stream_options={"include_usage": True,
                                                                       "include_obfuscation": False}))
        assert streamed[-1].usage is not None
        with pytest.raises(openai.BadRequestError, match="Unrecognized request argument supplied: made_up"):
            client.chat.completions.create(model="fake", messages=MESSAGES, extra_body={"made_up": 1})
        with pytest.raises(openai.BadRequestError, match="audio output is not supported"):
            client.chat.completions.create(model="fake", messages=MESSAGES, audio={"voice": "x", "format": "wav"})


def test_models_retrieve_unknown_routes_and_trailing_slashes(scripted):
    _engine, server = scripted("Hello.")
    with server as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        assert client.models.retrieve("fake").id == "fake"
        with pytest.raises(openai.NotFoundError, match="does not exist on this server; it serves: fake"):
            client.models.retrieve("other")
        missing = httpx.post(url + "/v1/responses", json={})
        assert missing.status_code == 404
        error = missing.json()["error"]
        assert error["code"] == "not_found" and "POST /v1/chat/completions" in error["message"]
        slashed = httpx.post(url + "/v1/chat/completions/", json={"messages": MESSAGES}, follow_redirects=False)
        assert slashed.status_code == 200 and slashed.json()["choices"][0]["message"]["content"] == "Hello."
        assert httpx.get(url + "/v1/models/", follow_redirects=False).status_code == 200


def test_cors_preflight_comes_before_the_key_and_the_real_request_still_needs_it(scripted):
    _engine, server = scripted("Hello.", api_key="sekret", allowed="https://app.example.com")
    with server as url:
        preflight = httpx.options(url + "/v1/chat/completions", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        body = {"messages": MESSAGES}
        anonymous = httpx.post(url + "/v1/chat/completions", json=body, headers={"Origin": "https://app.example.com"})
        assert anonymous.status_code == 401
        keyed = httpx.post(url + "/v1/chat/completions", json=body, headers={
            "Origin": "https://app.example.com", "Authorization": "Bearer sekret"})
        assert keyed.status_code == 200 and keyed.headers["access-control-allow-origin"] == "https://app.example.com"
        local = httpx.post(url + "/v1/chat/completions", json=body, headers={
            "Origin": "http://localhost:5173", "Authorization": "Bearer sekret"})
        assert local.status_code == 200  # loopback pages are allowed by default


def test_pages_elsewhere_cannot_make_the_server_generate(scripted):
    engine, server = scripted("Hello.")
    with server as url:
        evil = {"Origin": "https://evil.example"}
        for headers in (evil, {**evil, "Access-Control-Request-Method": "POST"}):
            refused = httpx.request("OPTIONS" if len(headers) > 1 else "POST", url + "/v1/chat/completions",
                                    json={"messages": MESSAGES}, headers=headers)
            assert refused.status_code == 403 and "--allowed-origins" in refused.json()["error"]["message"]
        # A no-cors form-like POST: text/plain, no preflight. Refused by content type even without an Origin.
        plain = httpx.post(url + "/v1/chat/completions", content=json.dumps({"messages": MESSAGES}),
                           headers={"Content-Type": "text/plain"})
        assert plain.status_code == 415 and plain.json()["error"]["code"] == "unsupported_media_type"
        assert engine.prompts == []  # nothing was generated
