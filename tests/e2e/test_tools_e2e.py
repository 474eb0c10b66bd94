"""Tool calls round trip through the server with the real openai client: a scripted engine for the protocol, a
tiny model trained on tool-call conversations for the real check (slow)."""

import json

import openai
import pytest
from serving_helpers import ScriptedEngine, running_server

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
HERMES_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture
def tool_server():
    from serving.app import ServerState
    from serving.router import Router

    def script(messages):
        if messages[-1]["role"] == "tool":
            return f"It is {json.loads(messages[-1]['content'])['temperature']} degrees in Paris."
        return "Let me look.\n" + HERMES_CALL

    engine = ScriptedEngine(script)
    with running_server(ServerState(router=Router("fake"), engine=engine)) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0), engine


def _conversation(client, stream):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    if stream:
        chunks = list(client.chat.completions.create(model="fake", messages=messages, tools=[WEATHER], stream=True))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        calls = [call for d in deltas for call in (d.tool_calls or [])]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        content = "".join(d.content or "" for d in deltas)
        call = calls[0]
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
    else:
        reply = client.chat.completions.create(model="fake", messages=messages, tools=[WEATHER])
        finish, content = reply.choices[0].finish_reason, reply.choices[0].message.content
        call = reply.choices[0].message.tool_calls[0]
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
    assert finish == "tool_calls" and content.strip() == "Let me look." and name == "get_weather"
    assert json.loads(arguments) == {"city": "Paris"}
    messages += [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"temperature": 21})}]
    final = client.chat.completions.create(model="fake", messages=messages, tools=[WEATHER])
    assert final.choices[0].message.content == "It is 21 degrees in Paris."
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.tool_calls is None


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_tool_call_round_trip_with_the_openai_client(tool_server, stream):
    client, engine = tool_server
    _conversation(client, stream)
    rendered, tools = engine.prompts[-1]
    assert tools[0]["function"]["name"] == "get_weather"  # the template receives the tools
    assistant, tool = rendered[1], rendered[2]
    assert assistant["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}  # an object, as templates want
    assert tool["role"] == "tool" and tool["tool_call_id"] == assistant["tool_calls"][0]["id"]


def test_tool_choice_none_hides_the_tools_and_needs_tools(tool_server):
    """Forced calls (tool_choice "required" or a named function) are tested in test_clients_protocol.py."""
    client, engine = tool_server
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    client.chat.completions.create(model="fake", messages=messages, tools=[WEATHER], tool_choice="none")
    assert engine.prompts[-1][1] is None
    with pytest.raises(openai.BadRequestError, match="tool_choice needs tools"):
        client.chat.completions.create(model="fake", messages=messages, tool_choice="auto")

TOOL_DATA = [
    {"messages": [{"role": "user", "content": f"What is the weather in {city}?"},
                  {"role": "assistant", "content": "", "tool_calls": [
                      {"id": "call_1", "type": "function",
                       "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}]}]}
    for city in ("Paris", "Oslo", "Rome", "Lima")
]


@pytest.mark.slow
def test_a_model_trained_on_tool_calls_round_trips(builtin_model_dir, tmp_path):
    """Seed 000's case: OpenAI-format tool-call conversations, our trainer, our server, the openai client."""
    import subprocess

    from conftest import copy_installed
    from serving_helpers import load_state

    model_dir = copy_installed(builtin_model_dir, tmp_path / "tools-model")
    (model_dir / "tools.json").write_text(json.dumps(TOOL_DATA))
    result = subprocess.run([str(model_dir / "train.sh"), "--data", str(model_dir / "tools.json"), "--circular",
                             "--no-tensorboard", "--skip-test"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    with running_server(load_state(model_dir)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model="tools-model:lora", temperature=0, tools=[WEATHER],
            messages=[{"role": "user", "content": "What is the weather in Oslo?"}])
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message.content
        assert choice.message.tool_calls[0].function.name == "get_weather"
        assert json.loads(choice.message.tool_calls[0].function.arguments) == {"city": "Oslo"}
