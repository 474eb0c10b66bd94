"""The real SmolLM2-135M-Instruct served by start.sh's app: structured output through the openai SDK's parse() and
a forced tool call, where the grammar must hold a real model's vocabulary (multi-character JSON tokens)."""

import json
from typing import Literal

import openai
import pytest
from pydantic import BaseModel
from serving_helpers import load_state, running_server


class Country(BaseModel):
    name: str
    capital: str
    continent: Literal["Europe", "Asia", "Africa", "America", "Oceania"]


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 40},
                                                "unit": {"enum": ["celsius", "fahrenheit"]}},
                                                "required": ["city", "unit"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from export_helpers import install_local
    from real_model import smollm2_model_dir

    root = install_local(smollm2_model_dir(), tmp_path_factory.mktemp("clients") / "models", "smollm2")
    with running_server(load_state(root)) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)


@pytest.mark.real_model
def test_smollm2_structured_output_parses_into_the_schema(smollm2):
    reply = smollm2.chat.completions.parse(
        model="smollm2", temperature=0, max_tokens=60, response_format=Country,
        messages=[{"role": "user", "content": "Give the name, capital and continent of France as JSON."}])
    country = reply.choices[0].message.parsed
    assert isinstance(country, Country) and reply.choices[0].finish_reason == "stop"
    assert country.name and country.capital
    content = reply.choices[0].message.content
    assert list(json.loads(content)) == ["name", "capital", "continent"]  # in the schema's order


@pytest.mark.real_model
def test_smollm2_forced_tool_call_has_the_tools_arguments(smollm2):
    reply = smollm2.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=60, tools=[WEATHER], tool_choice="required",
        messages=[{"role": "user", "content": "What is the weather in Paris, in celsius?"}])
    call = reply.choices[0].message.tool_calls[0]
    arguments = json.loads(call.function.arguments)
    assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")
