"""--engine llama.cpp: refused in one sentence while llama-cpp-python is missing; with it, the base and the
adapter (GGUFs converted once, cached in the model directory) served through the same API and routing as
the transformers engine, answering as it does."""

import json

import openai
import pytest
from serving_helpers import load_state, running_server

from serving.config import ServeConfigError, parse_config


@pytest.mark.unit
def test_missing_llama_cpp_python_is_one_sentence_with_the_setup_command(monkeypatch):
    from serving import llamacpp
    from serving.engine import LoadError

    monkeypatch.setattr(llamacpp.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LoadError, match=r"run `\./llm-installer setup --engine llama\.cpp`"):
        llamacpp.require_llama_cpp()


@pytest.mark.unit
@pytest.mark.parametrize("flags", [["--quantization", "4bit"], ["--dtype", "float16"], ["--device", "cuda"],
                                   ["--cpu-offload"], ["--max-concurrency", "4"]])
def test_transformers_only_flags_are_refused_with_llama_cpp(tmp_path, flags):
    with pytest.raises(ServeConfigError, match="apply to --engine transformers"):
        parse_config(["--model-dir", str(tmp_path), "--engine", "llama.cpp", *flags])


@pytest.fixture(scope="module")
def smollm2_with_adapter(tmp_path_factory):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed on demand (setup --engine llama.cpp)")
    from real_model import smollm2_model_dir, test_cache_root
    from test_export import add_adapter, install_local

    from installer import llamacpp

    converter = test_cache_root() / "llama.cpp" / llamacpp.LLAMA_CPP_PYTHON_VERSION  # shared with the export tests
    if not (converter / llamacpp.COMPLETE_MARKER).is_file():
        llamacpp.fetch(converter, echo=lambda _m: None)
    root = install_local(smollm2_model_dir(), tmp_path_factory.mktemp("llamacpp") / "models", "smollm2")
    add_adapter(root, rank=8)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(llamacpp.CHECKOUT_ENV, str(converter))
        yield root


@pytest.mark.real_model
@pytest.mark.e2e
def test_llama_cpp_engine_serves_base_and_adapter_like_transformers(smollm2_with_adapter):
    question = [{"role": "user", "content": "What is the capital of France?"}]
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
    assert answers["llama.cpp", "smollm2"] != answers["llama.cpp", "smollm2:lora"]
    for model in ("smollm2", "smollm2:lora"):  # q8_0 against float32: the same first words
        assert answers["llama.cpp", model].split()[:3] == answers["transformers", model].split()[:3], answers
    cached = sorted(p.name for p in (smollm2_with_adapter / "gguf").iterdir())
    assert cached[0] == "base-q8_0.gguf" and cached[1].startswith("lora-") and len(cached) == 2
    assert json.loads((smollm2_with_adapter / "lora" / "adapter_info.json").read_text())  # adapter untouched
