"""response_format on the served built-in model: enforced by xgrammar on the transformers engine (a 400 naming
the way out where xgrammar is missing); the llama.cpp engine's grammar is tested with the real model in
tests/e2e/test_serving_llamacpp_e2e.py."""

import json

import openai
import pytest
from serving_helpers import load_state, running_server

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}


@pytest.fixture(scope="module")
def client(builtin_model_dir):
    with running_server(load_state(builtin_model_dir)) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


def _ask(client, response_format, **extra):
    return client.chat.completions.create(model="builtin_tiny-chat", temperature=0, max_tokens=40,
                                          messages=[{"role": "user", "content": "Is the sky blue?"}],
                                          response_format=response_format, **extra)


def test_without_xgrammar_the_transformers_engine_refuses_json_naming_the_way_out(client, monkeypatch):
    from serving.engines import structured

    monkeypatch.setattr(structured, "xgrammar_available", lambda: False)
    with pytest.raises(openai.BadRequestError, match="install xgrammar .* or serve with --engine llama.cpp") as error:
        _ask(client, {"type": "json_object"})
    assert error.value.body["param"] == "response_format"


def test_xgrammar_makes_the_transformers_engine_answer_json_of_the_schema(client):
    pytest.importorskip("xgrammar", reason="xgrammar is optional (pip install xgrammar)")
    response_format = {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}}
    plain = _ask(client, None).choices[0].message.content
    reply = _ask(client, response_format)
    assert json.loads(reply.choices[0].message.content) in ({"answer": "yes"}, {"answer": "no"}), plain
    assert reply.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in _ask(client, response_format, stream=True)
                       if c.choices)
    assert streamed == reply.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="cannot be enforced"):
        _ask(client, {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})
