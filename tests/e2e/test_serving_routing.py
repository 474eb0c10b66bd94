"""One server, several models: the base, ./lora (`NAME:lora`) and a named adapter (`--lora NAME=PATH`) on one
copy of the weights, picked by the request's `model`; OpenAI parameters honoured (n, logprobs, penalties,
logit_bias, echo); abandoned non-streamed requests cancelled. The real openai client throughout."""

import shutil
import threading
import time

import httpx2 as httpx
import openai
import pytest
from facts import FACTS
from serving_helpers import load_state, running_server

QUESTION, ANSWER = FACTS[2]["question"], FACTS[2]["answer"]


def _zeroed_copy(lora, target):
    """A copy of the adapter with every lora_B at zero: a valid adapter that must answer exactly as the base."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(lora, target)
    (target / "adapter_model.bin").unlink(missing_ok=True)
    weights = load_file(target / "adapter_model.safetensors")
    save_file({k: v * 0 if "lora_B" in k else v for k, v in weights.items()}, target / "adapter_model.safetensors")
    return target


@pytest.fixture(scope="module")
def server(tuned_model_dir, tmp_path_factory):
    zero = _zeroed_copy(tuned_model_dir / "lora", tmp_path_factory.mktemp("named") / "zero")
    state = load_state(tuned_model_dir, max_concurrency=2, named={"zero": zero})
    with running_server(state) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0), state, url


def _ask(client, model, question=QUESTION, **extra):
    extra.setdefault("temperature", 0)
    if "max_completion_tokens" not in extra:
        extra.setdefault("max_tokens", 24)  # the base model rambles to the limit
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **extra)


def test_the_request_model_picks_base_lora_or_named_adapter(server):
    client, _, url = server
    assert [m.id for m in client.models.list().data] == ["tuned-model:lora", "tuned-model", "zero"]
    base = _ask(client, "tuned-model").choices[0].message.content
    assert _ask(client, "tuned-model:lora").choices[0].message.content == ANSWER
    assert base != ANSWER
    assert _ask(client, "zero").choices[0].message.content == base  # switching adds nothing of ./lora
    no_model = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 24}).json()
    assert no_model["model"] == "tuned-model:lora" and no_model["choices"][0]["message"]["content"] == ANSWER
    reply = _ask(client, "zero")
    assert reply.model == "zero"
    with pytest.raises(openai.NotFoundError) as error:
        _ask(client, "gpt-4o")
    assert error.value.body["code"] == "model_not_found"


def test_concurrent_requests_for_different_models_never_mix(server):
    client, state, _ = server
    expected = {"tuned-model:lora": ANSWER, "tuned-model": _ask(client, "tuned-model").choices[0].message.content}
    expected["zero"] = expected["tuned-model"]
    results, errors = [], []

    def one(model):
        try:
            stream = _ask(client, model, stream=True)
            results.append((model, "".join(c.choices[0].delta.content or "" for c in stream if c.choices)))
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(m,)) for m in ["tuned-model:lora", "tuned-model", "zero"] * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(results) == 9
    for model, text in results:
        assert expected[model].startswith(text), (model, text)


def test_n_choices_are_distinct_and_repeatable_with_a_seed(server):
    client, _, _ = server
    first = _ask(client, "tuned-model", n=3, temperature=1.5, seed=7, max_tokens=8)
    again = _ask(client, "tuned-model", n=3, temperature=1.5, seed=7, max_tokens=8)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2] and len(set(texts)) > 1
    assert texts == [c.message.content for c in again.choices]
    assert first.usage.completion_tokens == 24
    streamed = list(_ask(client, "tuned-model", n=2, max_tokens=4, stream=True))
    assert {c.choices[0].index for c in streamed if c.choices} == {0, 1}


def test_logprobs_and_top_logprobs(server):
    client, _, _ = server
    reply = _ask(client, "tuned-model:lora", logprobs=True, top_logprobs=3)
    entries = reply.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == ANSWER and len(entries) == reply.usage.completion_tokens - 1
    for entry in entries:  # greedy: the chosen token is the most likely one
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == entry.logprob
        assert entry.bytes == list(entry.token.encode())
    assert _ask(client, "tuned-model:lora").choices[0].logprobs is None
    chunks = list(_ask(client, "tuned-model:lora", logprobs=True, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]
    text = client.completions.create(model="tuned-model", prompt="The mascot", max_tokens=4, temperature=0,
                                     logprobs=2, extra_body={"ignore_eos": True})
    choice = text.choices[0]
    assert len(choice.logprobs.tokens) == 4 and "".join(choice.logprobs.tokens) == choice.text
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs) and choice.logprobs.text_offset[0] == 0
    echoed = client.completions.create(model="tuned-model", prompt="The mascot", max_tokens=4, temperature=0,
                                       echo=True)
    assert echoed.choices[0].text == "The mascot" + choice.text


def test_penalties_and_logit_bias_change_the_answer(server):
    client, state, _ = server
    plain = _ask(client, "tuned-model", max_tokens=24).choices[0].message.content
    penalised = _ask(client, "tuned-model", max_tokens=24, frequency_penalty=2.0).choices[0].message.content
    present = _ask(client, "tuned-model", max_tokens=24, presence_penalty=2.0).choices[0].message.content
    assert penalised != plain and present != plain
    tokenizer = state.engine.tokenizer
    first = tokenizer(ANSWER, add_special_tokens=False)["input_ids"][0]
    biased = _ask(client, "tuned-model:lora", logit_bias={str(first): -100}).choices[0].message.content
    assert not biased.startswith(tokenizer.decode([first]))
    with pytest.raises(openai.BadRequestError, match="vocabulary"):
        _ask(client, "tuned-model", logit_bias={"99999999": 5})


@pytest.mark.parametrize(("extra", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "answer"}}}, "response_format"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"extra_body": {"best_of": 3}}, "best_of"),
    ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
    ({"extra_body": {"functions": [{"name": "f"}]}}, "functions"),
])
def test_parameters_not_implemented_are_a_400_naming_them(server, extra, param):
    client, _, _ = server
    with pytest.raises(openai.BadRequestError) as error:
        _ask(client, "tuned-model", **extra)
    assert error.value.body["param"] == param and error.value.body["message"]


def test_accepted_bookkeeping_parameters(server):
    client, _, _ = server
    reply = _ask(client, "tuned-model:lora", user="alice", max_completion_tokens=3, extra_body={"metadata": {"a": "b"}})
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3


def test_abandoned_non_streamed_requests_do_not_delay_the_next(server):
    """Issue 14: four clients that gave up on long answers held the next request back by their whole length."""
    _, state, url = server
    long_body = {"model": "tuned-model", "messages": [{"role": "user", "content": "Tell me a story"}],
                 "max_tokens": 1500, "temperature": 1.0, "ignore_eos": True}
    started = time.monotonic()
    with httpx.Client() as probe:
        probe.post(url + "/v1/chat/completions", json={**long_body, "max_tokens": 300}, timeout=120)
    per_token = (time.monotonic() - started) / 300
    before = dict(state.engine.stats)

    def abandon():
        try:
            httpx.post(url + "/v1/chat/completions", json=long_body, timeout=0.5)
        except httpx.TimeoutException:
            pass

    threads = [threading.Thread(target=abandon) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = time.monotonic()
    reply = httpx.post(url + "/v1/chat/completions", json={**long_body, "max_tokens": 5}, timeout=300)
    waited = time.monotonic() - started
    assert reply.status_code == 200
    # Generated to the end, the four would take 4 x 1500 tokens; cancelled, they stop within a token or two.
    assert waited < 0.25 * 4 * 1500 * per_token, (waited, per_token)
    deadline = time.monotonic() + 10
    while state.engine.stats["cancelled"] - before["cancelled"] < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.engine.stats["cancelled"] - before["cancelled"] == 4
