"""Handler registry: lookup, validation, rank rule, and target modules that really exist."""

import pytest
from tiny_models import FAMILIES, tiny_config

import handlers
from handlers import ModelHandler, auto_lora_rank, handler_for_config
from handlers.generic import discover_linear_targets
from handlers.registry import register


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [("llama", "llama"), ("mistral", "mistral"), ("mixtral", "mixtral"), ("qwen2", "qwen"), ("qwen3", "qwen"),
     ("gemma", "gemma"), ("gemma2", "gemma"), ("gemma3", "gemma3"), ("gemma3_text", "gemma3"), ("phi", "phi"),
     ("phi3", "phi3"), ("gpt2", "gpt2"), ("gpt_neox", "gpt_neox"), ("llama4", "llama4"), ("falcon", "generic")],
)
def test_handler_lookup_by_model_type(model_type, expected):
    assert handler_for_config({"model_type": model_type}).name == expected


def test_deepseek_r1_distill_qwen_is_qwen():
    config = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}
    assert handler_for_config(config).name == "qwen"


@pytest.mark.parametrize(
    ("parameters", "rank"),
    [(1e6, 8), (5e8, 8), (1e9, 16), (2.9e9, 16), (3e9, 32), (6.9e9, 32), (8e9, 64), (13e9, 128), (29e9, 128), (70e9, 256)],
)
def test_rank_by_size(parameters, rank):
    assert auto_lora_rank(int(parameters)) == rank
    assert handlers.by_name("llama").lora_alpha(int(parameters)) == 2 * rank


def test_precision_per_family_and_device():
    assert handlers.by_name("gemma3").precision_for("cuda") == "bfloat16"
    assert handlers.by_name("llama4").precision_for("cuda") == "bfloat16"
    assert handlers.by_name("llama").precision_for("cuda") == "bfloat16"
    assert handlers.by_name("gemma3").precision_for("cpu") == "float32"


def test_half_precision_falls_back_to_float16_without_bf16(monkeypatch):
    import torch

    from training import modeling

    monkeypatch.setattr(modeling, "resolve_device", lambda requested: "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert modeling.choose_placement("cuda", handlers.by_name("llama")).precision == "float16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert modeling.choose_placement("cuda", handlers.by_name("llama")).precision == "bfloat16"


def test_registration_rejects_duplicates_and_bad_fields():
    with pytest.raises(ValueError, match="claimed by"):
        register(ModelHandler(name="llama-copy", model_types=("llama",), target_modules=("q_proj",)))
    with pytest.raises(ValueError, match="registered twice"):
        register(ModelHandler(name="llama", model_types=("new-type",), target_modules=("q_proj",)))
    with pytest.raises(ValueError, match="target_modules is empty"):
        ModelHandler(name="x", model_types=("x",), target_modules=())
    with pytest.raises(ValueError, match="training_precision"):
        ModelHandler(name="x", model_types=("x",), target_modules=("a",), training_precision="fp8")


def _linear_leaf_names(model) -> set[str]:
    import torch
    from transformers.pytorch_utils import Conv1D

    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear | Conv1D)}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_target_modules_are_real_linear_layers(model_type):
    import torch
    from transformers import AutoModelForCausalLM

    handler = handler_for_config({"model_type": model_type})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(tiny_config(model_type))
    leaves = _linear_leaf_names(model)
    missing = set(handler.target_modules) - leaves
    assert not missing, f"{handler.name}: {sorted(missing)} are not linear layers of {model_type} ({sorted(leaves)})"


def test_generic_handler_discovers_linear_layers():
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(tiny_config("gpt_neox"))
    targets = discover_linear_targets(model)
    assert "query_key_value" in targets and "dense_h_to_4h" in targets
    assert "embed_out" not in targets
