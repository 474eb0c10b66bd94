"""Continuous batching (on by default on CUDA), forced on here on the CPU with the tuned built-in model:
concurrent requests get the answers `generate` gives them alone, for the base model and the adapter, stop
strings and departures free their slot, and requests batching cannot serve exactly still run through
`generate`."""

import threading

import openai
import pytest
from serving_helpers import load_state, running_server

PROMPTS = ["Hello", "What is the capital of France?", "Count to five.", "Tell me a story", "Say yes."]


@pytest.fixture(scope="module")
def batched(tuned_model_dir):
    state = load_state(tuned_model_dir, batching="on")
    calls = []
    tokens = state.engine._batcher.tokens

    def counting(*args, **kwargs):
        calls.append(args[0])
        yield from tokens(*args, **kwargs)

    state.engine._batcher.tokens = counting
    with running_server(state) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0), state, calls
    state.engine.close()


def _ask(client, prompt, model="tuned-model:lora", **extra):
    extra.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], **extra)


def test_concurrent_greedy_requests_are_batched_and_answer_as_generate_does(batched):
    client, state, calls = batched
    assert state.engine._gate._slots == 32  # the default with batching
    answers, errors = {}, []

    def one(index, prompt):
        try:
            answers[index] = _ask(client, prompt, max_tokens=8 + 4 * index)
            answers["base", index] = _ask(client, prompt, "tuned-model", max_tokens=8 + 4 * index)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=item) for item in enumerate(PROMPTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(calls) == 2 * len(PROMPTS)
    for index, prompt in enumerate(PROMPTS):  # a seed sends a greedy request through generate() instead
        for model, key in (("tuned-model:lora", index), ("tuned-model", ("base", index))):
            alone = _ask(client, prompt, model, max_tokens=8 + 4 * index, seed=1)
            reply = answers[key]
            assert reply.choices[0].message.content == alone.choices[0].message.content
            assert reply.usage.completion_tokens == alone.usage.completion_tokens
            assert reply.choices[0].finish_reason == alone.choices[0].finish_reason
    assert answers[1].choices[0].message.content != answers["base", 1].choices[0].message.content  # the adapter
    assert len(calls) == 2 * len(PROMPTS)


def test_stop_strings_streaming_and_unbatchable_requests(batched):
    client, _, calls = batched
    before = len(calls)
    full = _ask(client, "Tell me a story", max_tokens=40, extra_body={"ignore_eos": True})
    assert full.usage.completion_tokens == 40 and full.choices[0].finish_reason == "length"
    text = full.choices[0].message.content
    stop = text[len(text) // 2:len(text) // 2 + 3]
    cut = _ask(client, "Tell me a story", max_tokens=40, stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].message.content == text[:text.index(stop)]
    streamed = "".join(c.choices[0].delta.content or "" for c in _ask(
        client, "Tell me a story", max_tokens=40, stream=True, extra_body={"ignore_eos": True}) if c.choices)
    assert streamed == text
    sampled = _ask(client, "Hello", temperature=0.8, top_p=0.9, max_tokens=6)
    assert sampled.usage.completion_tokens <= 6
    assert len(calls) == before + 4
    with_logprobs = _ask(client, "Hello", max_tokens=4, logprobs=True)  # not batchable: generate() serves it
    assert with_logprobs.choices[0].logprobs.content and len(calls) == before + 4
