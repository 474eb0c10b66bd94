"""Tool calls: the parser for each template family's format, its streaming form, and the round trip through
the server with the real openai client (a scripted engine for the formats; a tiny model trained on tool-call
conversations for the real check, marked slow)."""

import json

import openai
import pytest
from serving_helpers import ScriptedEngine, running_server

from serving.tools import ToolCallStream, parse_tool_calls

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
NAMES = {"get_weather"}

FORMATS = {
    "hermes": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    "hermes-two": ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
                   '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'),
    "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    "mistral-v11": '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
    "llama": '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    "llama-python-tag": '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
}


@pytest.mark.unit
@pytest.mark.parametrize("name", FORMATS)
def test_each_format_parses_into_openai_tool_calls(name):
    content, calls = parse_tool_calls(FORMATS[name], NAMES)
    assert content == ""
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert len(calls) == (2 if name == "hermes-two" else 1)


@pytest.mark.unit
@pytest.mark.parametrize("text", [
    "The weather is fine.",
    '{"name": "not_offered", "parameters": {}}',  # bare JSON only counts for offered tools
    '{"answer": 42}',
    "<tool_call>{not json}</tool_call>",
    '[TOOL_CALLS][{"arguments": {}}]',
])
def test_text_that_is_not_a_call_stays_text(text):
    assert parse_tool_calls(text, NAMES) == (text, [])


@pytest.mark.unit
def test_content_before_a_hermes_call_is_kept():
    content, calls = parse_tool_calls("Let me check.\n" + FORMATS["hermes"], NAMES)
    assert content == "Let me check." and calls[0]["function"]["name"] == "get_weather"


def _stream(text, size=2):
    stream = ToolCallStream(NAMES)
    sent = "".join(stream.feed(text[i:i + size]) for i in range(0, len(text), size))
    return sent, stream.finish()


@pytest.mark.unit
@pytest.mark.parametrize("name", FORMATS)
def test_streaming_holds_a_call_back_and_sends_it_whole(name):
    sent, (rest, calls) = _stream(FORMATS[name])
    assert sent == "" and rest == "" and calls[0]["function"]["name"] == "get_weather"


@pytest.mark.unit
def test_streaming_sends_plain_text_as_it_comes_and_text_before_a_call():
    sent, (rest, calls) = _stream("Hello there, <tool and more text.")
    assert sent + rest == "Hello there, <tool and more text." and calls == []
    assert sent.startswith("Hello there, ")
    sent, (rest, calls) = _stream("Checking. " + FORMATS["hermes"])
    assert sent == "Checking. " and rest == "" and len(calls) == 1


@pytest.fixture
def tool_server():
    from serving.app import ServerState
    from serving.router import Router

    def script(messages):
        if messages[-1]["role"] == "tool":
            return f"It is {json.loads(messages[-1]['content'])['temperature']} degrees in Paris."
        return "Let me look.\n" + FORMATS["hermes"]

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


@pytest.mark.e2e
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_tool_call_round_trip_with_the_openai_client(tool_server, stream):
    client, engine = tool_server
    _conversation(client, stream)
    rendered, tools = engine.prompts[-1]
    assert tools[0]["function"]["name"] == "get_weather"  # the template receives the tools
    assistant, tool = rendered[1], rendered[2]
    assert assistant["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}  # an object, as templates want
    assert tool["role"] == "tool" and tool["tool_call_id"] == assistant["tool_calls"][0]["id"]


@pytest.mark.e2e
def test_tool_choice_none_hides_the_tools_and_required_is_refused(tool_server):
    client, engine = tool_server
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    client.chat.completions.create(model="fake", messages=messages, tools=[WEATHER], tool_choice="none")
    assert engine.prompts[-1][1] is None
    with pytest.raises(openai.BadRequestError, match="constrained decoding"):
        client.chat.completions.create(model="fake", messages=messages, tools=[WEATHER], tool_choice="required")
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
@pytest.mark.e2e
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
