"""Tool calls: the parser for each template family's format and its streaming form (the round trip through the
server with the real openai client is in tests/e2e/test_tools_e2e.py)."""

import json

import pytest

from serving.tools import ToolCallStream, parse_tool_calls

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


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_parses_into_openai_tool_calls(name):
    content, calls = parse_tool_calls(FORMATS[name], NAMES)
    assert content == ""
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert len(calls) == (2 if name == "hermes-two" else 1)


@pytest.mark.parametrize("text", [
    "The weather is fine.",
    '{"name": "not_offered", "parameters": {}}',  # bare JSON only counts for offered tools
    '{"answer": 42}',
    "<tool_call>{not json}</tool_call>",
    '[TOOL_CALLS][{"arguments": {}}]',
])
def test_text_that_is_not_a_call_stays_text(text):
    assert parse_tool_calls(text, NAMES) == (text, [])


def test_content_before_a_hermes_call_is_kept():
    content, calls = parse_tool_calls("Let me check.\n" + FORMATS["hermes"], NAMES)
    assert content == "Let me check." and calls[0]["function"]["name"] == "get_weather"


def _stream(text, size=2):
    stream = ToolCallStream(NAMES)
    sent = "".join(stream.feed(text[i:i + size]) for i in range(0, len(text), size))
    return sent, stream.finish()


@pytest.mark.parametrize("name", FORMATS)
def test_streaming_holds_a_call_back_and_sends_it_whole(name):
    sent, (rest, calls) = _stream(FORMATS[name])
    assert sent == "" and rest == "" and calls[0]["function"]["name"] == "get_weather"


def test_streaming_sends_plain_text_as_it_comes_and_text_before_a_call():
    sent, (rest, calls) = _stream("Hello there, <tool and more text.")
    assert sent + rest == "Hello there, <tool and more text." and calls == []
    assert sent.startswith("Hello there, ")
    sent, (rest, calls) = _stream("Checking. " + FORMATS["hermes"])
    assert sent == "Checking. " and rest == "" and len(calls) == 1
