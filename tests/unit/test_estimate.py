"""Parameter counts from config.json and file selection."""

import pytest
from tiny_models import tiny_config

from installer.estimate import _analytic_parameters, memory_table, parameters_from_config
from sources.base import RepoFile
from sources.selection import select_files


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "gemma", "phi", "phi3", "gpt2", "gpt_neox"])
def test_config_count_matches_real_model(model_type):
    import torch
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    true_count = sum(p.numel() for p in model.parameters())  # tied embeddings once
    counted = parameters_from_config(config.to_dict())
    assert abs(counted - true_count) / true_count < 0.02


def test_tied_embeddings_counted_once():
    config = tiny_config("gemma").to_dict()
    assert config["tie_word_embeddings"]
    untied = dict(config, tie_word_embeddings=False)
    assert parameters_from_config(untied) - parameters_from_config(config) == config["vocab_size"] * config["hidden_size"]


def test_analytic_fallback_is_close_for_llama_8b_shape():
    llama3_8b = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                 "intermediate_size": 14336, "vocab_size": 128256, "tie_word_embeddings": False}
    assert abs(_analytic_parameters(llama3_8b) - 8_030_261_248) / 8_030_261_248 < 0.02


def test_selection_prefers_safetensors_and_skips_duplicates():
    files = [RepoFile(n, 10) for n in (
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
        "consolidated.safetensors", "original/consolidated.00.pth", "tokenizer.json", "tokenizer_config.json",
        "tokenizer.model", "generation_config.json", "README.md", ".gitattributes", "onnx/model.onnx",
        "flax_model.msgpack", "tf_model.h5")]
    chosen = {f.path for f in select_files(files).files}
    assert chosen == {"config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                      "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
                      "generation_config.json"}


def test_selection_flags_pickle_only():
    selection = select_files([RepoFile("config.json", 1), RepoFile("pytorch_model.bin", 5),
                              RepoFile("training_args.bin", 1)])
    assert selection.pickle_only
    assert {f.path for f in selection.files} == {"config.json", "pytorch_model.bin"}


def test_memory_table_fits():
    rows = {r.name: r for r in memory_table(8_000_000_000, 24 * 1024**3)}
    assert rows["inference_int4"].fits and not rows["inference_fp32"].fits
    assert rows["qlora_training"].bytes < rows["lora_training"].bytes
