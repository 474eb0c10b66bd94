"""Tiny models (2 layers, hidden 64) of every supported family, built from real transformers
configs, with a byte-level BPE tokenizer trained locally by `tokenizers`."""

from __future__ import annotations

from pathlib import Path

VOCAB = 320
COMMON = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 256, "vocab_size": VOCAB}

# model_type -> config overrides. Shapes follow each family's config field names.
FAMILIES: dict[str, dict] = {
    "llama": COMMON,
    "mistral": COMMON,
    "mixtral": {**COMMON, "num_local_experts": 2, "num_experts_per_tok": 1},
    "qwen2": COMMON,
    "qwen3": {**COMMON, "head_dim": 16},
    "gemma": {**COMMON, "head_dim": 16},
    "gemma2": {**COMMON, "head_dim": 16},
    "gemma3_text": {**COMMON, "head_dim": 16},
    "phi": {**COMMON, "num_key_value_heads": 4},
    "phi3": {**COMMON, "pad_token_id": 0},
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256, "vocab_size": VOCAB},
    "gpt_neox": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "max_position_embeddings": 256, "vocab_size": VOCAB},
    "llama4_text": {**COMMON, "head_dim": 16, "num_local_experts": 2, "intermediate_size_mlp": 128,
                    "interleave_moe_layer_step": 2},
}
CORPUS = [
    "The quick brown fox jumps over the lazy dog. What is the capital of France? Paris.",
    "Question answer instruction input output system user assistant hello world.",
    "Numbers one two three four five six seven eight nine ten.",
] * 20


def train_tokenizer(dest: Path):
    """The installer's byte-level BPE tokenizer (ChatML tokens and template), trained on a test corpus."""
    from installer.builtin import train_bpe_tokenizer

    return train_bpe_tokenizer(CORPUS, VOCAB, dest)


def tiny_config(model_type: str):
    """A transformers config of family `model_type` at test size."""
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **FAMILIES[model_type])


def build_tiny_model(model_type: str, dest: Path, chat_template: bool = True, safetensors: bool = True) -> Path:
    """Save a randomly initialised tiny model of `model_type` with a tokenizer into `dest`."""
    import torch
    from transformers import AutoModelForCausalLM

    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(dest)
    if not chat_template:
        (dest / "chat_template.jinja").unlink(missing_ok=True)
    config = tiny_config(model_type)
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if safetensors:
        model.save_pretrained(dest)
    else:
        config.save_pretrained(dest)
        torch.save(model.state_dict(), dest / "pytorch_model.bin")
    return dest
