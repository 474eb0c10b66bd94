"""--engine llama.cpp with llama-cpp-python: the base and the adapter (GGUFs converted once, cached in the model
directory) served through the same API and routing as the transformers engine, answering as it does."""

import json

import openai
import pytest
from serving_helpers import load_state, running_server


@pytest.fixture(scope="module")
def smollm2_with_adapter(tmp_path_factory):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed on demand (setup --engine llama.cpp)")
    from export_helpers import add_adapter, install_local
    from real_model import smollm2_model_dir, test_cache_root

    from llamacpp import converter as llamacpp

    converter = test_cache_root() / "llama.cpp" / llamacpp.LLAMA_CPP_PYTHON_VERSION  # shared with the export tests
    if not (converter / llamacpp.COMPLETE_MARKER).is_file():
        llamacpp.fetch(converter, echo=lambda _m: None)
    root = install_local(smollm2_model_dir(), tmp_path_factory.mktemp("llamacpp") / "models", "smollm2")
    add_adapter(root, rank=8)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(llamacpp.CHECKOUT_ENV, str(converter))
        yield root


@pytest.mark.real_model
def test_llama_cpp_engine_serves_base_and_adapter_like_transformers(smollm2_with_adapter):
    # A question whose answer the adapter changes (base: "... is Neptune", adapter: "... is Jupiter"); the capital of
    # France is a near tie between "The" and "L'" (0.1 logit apart), which any quantization may flip.
    question = [{"role": "user", "content": "Name the largest planet in the solar system."}]
    answers = {}
    for engine in ("transformers", "llama.cpp"):
        with running_server(load_state(smollm2_with_adapter, engine=engine)) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            assert [m.id for m in client.models.list().data] == ["smollm2:lora", "smollm2"]
            for model in ("smollm2", "smollm2:lora"):
                reply = client.chat.completions.create(model=model, messages=question, temperature=0, max_tokens=12)
                answers[engine, model] = reply.choices[0].message.content
            if engine == "llama.cpp":
                with pytest.raises(openai.BadRequestError, match="logprobs"):
                    client.chat.completions.create(model="smollm2", messages=question, logprobs=True)
                streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                    model="smollm2:lora", messages=question, temperature=0, max_tokens=12, stream=True) if c.choices)
                assert streamed == answers[engine, "smollm2:lora"]
                _check_json_answers(client)
    assert answers["llama.cpp", "smollm2"] != answers["llama.cpp", "smollm2:lora"]
    for model in ("smollm2", "smollm2:lora"):  # q4_1 against float32: the same answer, the planet included
        assert answers["llama.cpp", model].split()[:9] == answers["transformers", model].split()[:9], answers
    cached = sorted(p.name for p in (smollm2_with_adapter / "gguf").iterdir())  # the bf16 it came from is gone
    assert cached[0] == "base-q4_1.gguf" and cached[1].startswith("lora-") and len(cached) == 2
    assert json.loads((smollm2_with_adapter / "lora" / "adapter_info.json").read_text())  # adapter untouched


def _check_json_answers(client):
    """response_format through llama.cpp's grammars: an object, then one of the schema, for base and adapter."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"], "additionalProperties": False}
    for model in ("smollm2", "smollm2:lora"):
        ask = {"model": model, "temperature": 0, "max_tokens": 80}
        reply = client.chat.completions.create(
            messages=[{"role": "user", "content": "What is the capital of France? Answer in JSON."}],
            response_format={"type": "json_object"}, **ask)
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
        reply = client.chat.completions.create(
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}, **ask)
        assert sorted(json.loads(reply.choices[0].message.content)) == ["city", "country"]
