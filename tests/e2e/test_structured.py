"""response_format on the served built-in model: enforced by llguidance (a requirement) on the transformers engine;
the real model and the clients' own structured-output helpers are in tests/e2e/test_clients_*.py."""

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


def test_the_transformers_engine_answers_json_of_the_schema_on_a_default_install(client):
    response_format = {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}}
    plain = _ask(client, None).choices[0].message.content
    reply = _ask(client, response_format)
    assert json.loads(reply.choices[0].message.content) in ({"answer": "yes"}, {"answer": "no"}), plain
    assert reply.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in _ask(client, response_format, stream=True)
                       if c.choices)
    assert streamed == reply.choices[0].message.content
    # Any object: the toy model may ramble inside a string until max_tokens, but what it wrote starts one.
    loose = _ask(client, {"type": "json_object"}).choices[0]
    assert loose.message.content.startswith("{")
    assert loose.finish_reason == "length" or isinstance(json.loads(loose.message.content), dict)


def test_a_schema_that_cannot_be_enforced_is_a_400_naming_response_format(client):
    for schema in ({"type": "nonsense"}, {"type": "string", "pattern": "("}):
        with pytest.raises(openai.BadRequestError, match="cannot be enforced") as error:
            _ask(client, {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        assert error.value.body["param"] == "response_format"
