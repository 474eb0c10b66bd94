"""--engine llama.cpp: refused in one sentence while llama-cpp-python is missing, flags that cannot apply
refused, threads and the default quantization, and llama.cpp's own quantizer (the real model served through
llama.cpp is in tests/e2e/test_serving_llamacpp_e2e.py)."""

import pytest

from serving.config import ServeConfigError, parse_config


def test_missing_llama_cpp_python_is_one_sentence_with_the_setup_command(monkeypatch):
    from serving.engines import llamacpp_engine as llamacpp
    from serving.engines.base import LoadError

    monkeypatch.setattr(llamacpp.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LoadError, match=r"run `\./llm-installer setup --engine llama\.cpp`"):
        llamacpp.require_llama_cpp()


@pytest.mark.parametrize("flags", [["--quantization", "4bit"], ["--dtype", "float16"], ["--device", "cuda"],
                                   ["--cpu-offload"], ["--max-concurrency", "4"]])
def test_transformers_only_flags_are_refused_with_llama_cpp(tmp_path, flags):
    with pytest.raises(ServeConfigError, match="apply to --engine transformers"):
        parse_config(["--model-dir", str(tmp_path), "--engine", "llama.cpp", *flags])


@pytest.mark.parametrize("flags, message", [
    (["--gguf-quant", "q4_0"], "--gguf-quant applies to --engine llama.cpp only"),
    (["--engine", "llama.cpp", "--threads", "-1"], "--threads must be at least 1"),
    (["--engine", "vllm", "--threads", "2"], "--threads applies to the CPU engines"),
])
def test_gguf_quant_and_threads_are_refused_where_they_cannot_apply(tmp_path, flags, message):
    with pytest.raises(ServeConfigError, match=message):
        parse_config(["--model-dir", str(tmp_path), *flags])


def test_llama_cpp_threads_default_to_omp_num_threads_else_physical_cores(monkeypatch):
    import psutil

    from serving.engines import llamacpp_engine as llamacpp

    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 8 if logical else 3)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert llamacpp.default_threads() == 2
    for value in ("", "0", "four"):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert llamacpp.default_threads() == 3


def test_default_quant_is_q4_k_m_where_rows_fit_k_quant_blocks_else_q4_1():
    from llamacpp.quantize import default_quant

    assert default_quant({"hidden_size": 4096, "intermediate_size": 14336}) == "q4_k_m"
    assert default_quant({"text_config": {"hidden_size": 2048, "intermediate_size": 8192}}) == "q4_k_m"
    assert default_quant({"hidden_size": 576, "intermediate_size": 1536}) == "q4_1"  # SmolLM2-135M
    assert default_quant({}) == "q4_1"


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
