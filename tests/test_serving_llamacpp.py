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
    from serving.engines import llamacpp_engine as llamacpp
    from serving.engines.transformers_engine import LoadError

    monkeypatch.setattr(llamacpp.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LoadError, match=r"run `\./llm-installer setup --engine llama\.cpp`"):
        llamacpp.require_llama_cpp()


@pytest.mark.unit
@pytest.mark.parametrize("flags", [["--quantization", "4bit"], ["--dtype", "float16"], ["--device", "cuda"],
                                   ["--cpu-offload"], ["--max-concurrency", "4"]])
def test_transformers_only_flags_are_refused_with_llama_cpp(tmp_path, flags):
    with pytest.raises(ServeConfigError, match="apply to --engine transformers"):
        parse_config(["--model-dir", str(tmp_path), "--engine", "llama.cpp", *flags])


@pytest.mark.unit
@pytest.mark.parametrize("flags, message", [
    (["--gguf-quant", "q4_0"], "--gguf-quant applies to --engine llama.cpp only"),
    (["--engine", "llama.cpp", "--threads", "-1"], "--threads must be at least 1"),
    (["--engine", "vllm", "--threads", "2"], "--threads applies to the CPU engines"),
])
def test_gguf_quant_and_threads_are_refused_where_they_cannot_apply(tmp_path, flags, message):
    with pytest.raises(ServeConfigError, match=message):
        parse_config(["--model-dir", str(tmp_path), *flags])


@pytest.mark.unit
def test_llama_cpp_threads_default_to_omp_num_threads_else_physical_cores(monkeypatch):
    import psutil

    from serving.engines import llamacpp_engine as llamacpp

    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 8 if logical else 3)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert llamacpp.default_threads() == 2
    for value in ("", "0", "four"):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert llamacpp.default_threads() == 3


@pytest.mark.unit
def test_default_quant_is_q4_k_m_where_rows_fit_k_quant_blocks_else_q4_1():
    from llamacpp.quantize import default_quant

    assert default_quant({"hidden_size": 4096, "intermediate_size": 14336}) == "q4_k_m"
    assert default_quant({"text_config": {"hidden_size": 2048, "intermediate_size": 8192}}) == "q4_k_m"
    assert default_quant({"hidden_size": 576, "intermediate_size": 1536}) == "q4_1"  # SmolLM2-135M
    assert default_quant({}) == "q4_1"


@pytest.mark.unit
def test_quantize_gguf_writes_the_asked_type_with_llama_cpps_own_quantizer(tiny_llama_dir, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed on demand (setup --engine llama.cpp)")
    import gguf
    from tiny_models import write_tiny_gguf

    from llamacpp.quantize import QuantizeError, quantize_gguf

    source = write_tiny_gguf(tiny_llama_dir, tmp_path / "tiny-f32.gguf")
    target = quantize_gguf(source, tmp_path / "tiny-q4_0.gguf", "q4_0", threads=1)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(target)).tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.1.ffn_down.weight"] == "Q4_0"
    assert types["blk.0.attn_norm.weight"] == "F32"  # 1-D tensors stay full precision
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-f32.gguf", "tiny-q4_0.gguf"]  # no partial file left
    with pytest.raises(QuantizeError, match="Unknown GGUF quantization 'q3'"):
        quantize_gguf(source, tmp_path / "x.gguf", "q3")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(QuantizeError, match="could not quantize .*broken.gguf to q8_0"):
        quantize_gguf(tmp_path / "broken.gguf", tmp_path / "y.gguf", "q8_0", threads=1)
    assert not (tmp_path / "y.gguf").exists()


@pytest.fixture(scope="module")
def smollm2_with_adapter(tmp_path_factory):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed on demand (setup --engine llama.cpp)")
    from real_model import smollm2_model_dir, test_cache_root
    from test_export import add_adapter, install_local

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
@pytest.mark.e2e
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
