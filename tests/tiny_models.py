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
    from sources.builtin import train_bpe_tokenizer

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


# HF llama parameter name (after "model.layers.N.") -> llama.cpp GGUF tensor name (after "blk.N.").
GGUF_LLAMA_NAMES = {
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}


def _llama_cpp_permute(weights, heads: int):
    """llama.cpp's rotary layout of q/k rows (what its converter does; transformers undoes it on load)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape)


def write_tiny_gguf(model_dir: Path, dest: Path, quantization: str | None = None, architecture: str = "llama",
                    tied: bool = False) -> Path:
    """Write the tiny llama in `model_dir` (from build_tiny_model) as a GGUF file with the `gguf` writer,
    the way llama.cpp's converter lays it out. `quantization` "Q8_0" stores the matrices quantized;
    `tied` leaves out output.weight, as files of models with tied embeddings do."""
    import json

    import gguf
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tensors = load_file(str(model_dir / "model.safetensors"))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(dest), architecture)
    writer.add_name("tiny llama")
    writer.add_license("apache-2.0")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config.get("rope_theta") or config.get("rope_parameters", {}).get("rope_theta", 10000.0))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quantization == "Q8_0" else gguf.LlamaFileType.ALL_F32)
    vocab = sorted(tokenizer["model"]["vocab"].items(), key=lambda item: item[1])
    specials = {token["content"] for token in tokenizer["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([gguf.TokenType.CONTROL if token in specials else gguf.TokenType.NORMAL for token, _ in vocab])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]])
    ids = dict(vocab)
    writer.add_bos_token_id(ids["<|endoftext|>"])
    writer.add_eos_token_id(ids["<|im_end|>"])
    writer.add_pad_token_id(ids["<|pad|>"])
    writer.add_chat_template((model_dir / "chat_template.jinja").read_text())
    for name, array in sorted(tensors.items()):
        if name == "model.embed_tokens.weight":
            target = "token_embd.weight"
        elif name == "model.norm.weight":
            target = "output_norm.weight"
        elif name == "lm_head.weight":
            if tied:
                continue
            target = "output.weight"
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            target = f"blk.{layer}.{GGUF_LLAMA_NAMES[rest]}"
            if rest.startswith("self_attn.q_proj"):
                array = _llama_cpp_permute(array, heads)
            elif rest.startswith("self_attn.k_proj"):
                array = _llama_cpp_permute(array, kv_heads)
        array = array.astype("float32")
        if quantization == "Q8_0" and array.ndim == 2:
            writer.add_tensor(target, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(target, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def safetensors_parameters(model_dir: Path) -> int:
    """The number of parameters in model_dir/model.safetensors, read from its header."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as handle:
        total = 0
        for name in handle.keys():
            count = 1
            for dim in handle.get_slice(name).get_shape():
                count *= dim
            total += count
        return total
