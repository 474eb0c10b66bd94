"""The client libraries people point at a local server, against the served built-in toy model: the openai SDK's
parse(), LangChain's with_structured_output and bind_tools, instructor's TOOLS and JSON_SCHEMA modes, litellm's
response_format and tool_choice; embeddings, batched/token-id completions with prompt log-probabilities, and
the vLLM/Ollama sampling extras. Schemas use enums so that the toy model's answers end."""

import base64
import struct
from typing import Literal

import openai
import pytest
from pydantic import BaseModel
from serving_helpers import load_state, running_server

MODEL = "builtin_tiny-chat"
QUESTION = [{"role": "user", "content": "Is the sky blue?"}]


class Answer(BaseModel):
    answer: Literal["yes", "no"]


class Weather(BaseModel):
    """Weather in a city."""

    city: Literal["Paris", "London"]


WEATHER_TOOL = {"type": "function", "function": {"name": "Weather", "description": "Weather in a city",
                                                 "parameters": Weather.model_json_schema()}}


@pytest.fixture(scope="module")
def served(builtin_model_dir):
    with running_server(load_state(builtin_model_dir)) as url:
        yield url


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served + "/v1", api_key="x", max_retries=0)


def test_openai_parse_returns_the_pydantic_object(client):
    reply = client.chat.completions.parse(model=MODEL, messages=QUESTION, response_format=Answer, temperature=0,
                                          max_tokens=30)
    assert isinstance(reply.choices[0].message.parsed, Answer)


def test_openai_forced_tool_call_named_and_required_streamed(client):
    named = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER_TOOL], temperature=0,
                                           tool_choice={"type": "function", "function": {"name": "Weather"}},
                                           max_tokens=40)
    call = named.choices[0].message.tool_calls[0]
    assert named.choices[0].finish_reason == "tool_calls" and call.function.name == "Weather"
    Weather.model_validate_json(call.function.arguments)
    chunks = [c for c in client.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER_TOOL],
                                                        tool_choice="required", parallel_tool_calls=False,
                                                        stream=True, temperature=0, max_tokens=40) if c.choices]
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and chunks[-1].choices[0].finish_reason == "tool_calls"
    Weather.model_validate_json(calls[0].function.arguments)


def test_langchain_structured_output_both_methods_and_forced_bind_tools(served):
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(base_url=served + "/v1", api_key="x", model=MODEL, temperature=0, max_tokens=40, max_retries=0)
    assert isinstance(chat.with_structured_output(Answer).invoke("Is the sky blue?"), Answer)  # json_schema
    assert isinstance(chat.with_structured_output(Answer, method="function_calling").invoke("Is the sky blue?"),
                      Answer)
    message = chat.bind_tools([Weather], tool_choice="Weather").invoke("Weather in Paris?")
    assert message.tool_calls[0]["name"] == "Weather" and message.tool_calls[0]["args"]["city"] in ("Paris", "London")


def test_instructor_tools_and_json_schema_modes(served):
    import instructor

    raw = openai.OpenAI(base_url=served + "/v1", api_key="x", max_retries=0)
    for mode in (instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA):
        client = instructor.from_openai(raw, mode=mode)
        answer = client.chat.completions.create(model=MODEL, messages=QUESTION, response_model=Answer,
                                                temperature=0, max_tokens=40, max_retries=0)
        assert isinstance(answer, Answer), mode


def test_litellm_response_format_and_required_tool_choice(served):
    import litellm

    common = dict(model=f"openai/{MODEL}", api_base=served + "/v1", api_key="x", messages=QUESTION,
                  temperature=0, max_tokens=40)
    reply = litellm.completion(response_format=Answer, **common)
    Answer.model_validate_json(reply.choices[0].message.content)
    # One call: left free to make several, the toy model keeps calling until max_tokens.
    called = litellm.completion(tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False, **common)
    assert called.choices[0].message.tool_calls[0].function.name == "Weather"


def test_embeddings_float_and_base64_are_the_same_mean_pooled_vectors(client, builtin_model_dir):
    from transformers import AutoConfig

    hidden = AutoConfig.from_pretrained(builtin_model_dir / "model").hidden_size
    texts = ["The sky is blue.", "Owls hunt at night."]
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    default = client.embeddings.create(model=MODEL, input=texts)  # the SDK asks for base64 and decodes it
    assert [len(d.embedding) for d in floats.data] == [hidden, hidden]
    assert floats.data[0].embedding != floats.data[1].embedding
    for a, b in zip(floats.data, default.data, strict=True):
        assert b.embedding == pytest.approx(a.embedding, rel=1e-6)
    import httpx2 as httpx

    raw = httpx.post(client.base_url.join("embeddings").__str__(), json={"input": texts[0],
                                                                        "encoding_format": "base64"}).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == pytest.approx(floats.data[0].embedding, rel=1e-6)
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model=MODEL, input="x", dimensions=8)


def test_completions_take_prompt_lists_and_token_ids_and_score_prompts(client, served):
    import httpx2 as httpx

    batch = client.completions.create(model=MODEL, prompt=["The sky", "An owl"], max_tokens=3, temperature=0, n=2)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    one = client.completions.create(model=MODEL, prompt="The sky", max_tokens=3, temperature=0)
    assert batch.choices[0].text == one.choices[0].text == batch.choices[1].text
    ids = httpx.post(served + "/v1/completions", json={"prompt": "The sky", "max_tokens": 0, "echo": True,
                                                       "logprobs": 1}).json()
    tokens = ids["choices"][0]["logprobs"]["tokens"]
    assert ids["choices"][0]["logprobs"]["token_logprobs"][0] is None and ids["choices"][0]["text"] == "The sky"
    # A generated token's log-probability equals the one scoring the prompt that ends with it gives.
    generated = httpx.post(served + "/v1/completions", json={"prompt": [[1, 2, 3]], "max_tokens": 1,
                                                             "temperature": 0, "logprobs": 1, "echo": True}).json()
    entries = generated["choices"][0]["logprobs"]
    assert len(entries["token_logprobs"]) == 4 and entries["token_logprobs"][0] is None
    next_id = client.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=1, temperature=0,
                                        logprobs=1).choices[0].logprobs
    assert entries["token_logprobs"][-1] == pytest.approx(next_id.token_logprobs[0], abs=1e-4)
    assert len(tokens) >= 2
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        client.completions.create(model=MODEL, prompt=[10**9], max_tokens=1)


def test_top_k_one_makes_sampling_greedy_whatever_the_seed(client):
    def sample(seed, **extra):
        return client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=2, seed=seed, max_tokens=12,
                                              extra_body=extra).choices[0].message.content

    assert len({sample(seed) for seed in range(4)}) > 1
    greedy = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0,
                                            max_tokens=12).choices[0].message.content
    assert {sample(seed, top_k=1) for seed in range(4)} == {greedy}
    assert sample(1, min_p=0.05, repetition_penalty=1.3)  # accepted and generating
