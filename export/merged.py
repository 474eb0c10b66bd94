"""The merged export: PEFT `merge_and_unload` into a complete model directory that plain transformers
loads — safetensors (sharded when large), config, generation config, tokenizer and the chat template
the adapter was trained with."""

from __future__ import annotations

import json
from pathlib import Path

from core.imports import hide_bitsandbytes
from export.job import BYTES_PER_PARAMETER, TORCH_DTYPES, ExportError, Job, native_dtype, parameters
from export.target import ExportTarget
from handlers import handler_for_config, is_multimodal_dir
from handlers.chat_templates import stop_token_ids

MAX_SHARD_SIZE = "5GB"


def chat_template(job: Job, tokenizer) -> str | None:
    """The template the adapter was trained with: the adapter's own (saved when training used a fallback),
    else the tokenizer's, else the family handler's fallback (what start.sh serves)."""
    if job.adapter is not None and job.adapter.chat_template:
        return job.adapter.chat_template
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template

    return handler_for_config(_config(job)).chat_template_fallback


def _config(job: Job) -> dict:
    return json.loads((job.model.weights / "config.json").read_text(encoding="utf-8"))


def _refuse_prequantized(job: Job) -> None:
    quantization = _config(job).get("quantization_config")
    if quantization:
        method = quantization.get("quant_method") or "quantized"
        raise ExportError(f"The weights in {job.model.weights} are pre-quantized ({method}), and an adapter can only "
                          f"be merged into unquantized weights: install the unquantized model, train on it, then "
                          f"export.")


def load_merged(job: Job, dtype: str):
    """The base model in `dtype` with the adapter merged into its weights (CPU), and its tokenizer (a multimodal
    model's processor: image processor, tokenizer and chat template, so the export reads images too)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    _refuse_prequantized(job)
    hide_bitsandbytes()  # merging works on unquantized weights: peft's import of it would only cost start-up time
    trust = bool(job.info.get("trust_remote_code"))
    job.echo(f"Loading {job.model.weights} ({dtype}) ...")
    multimodal = is_multimodal_dir(job.model.weights)
    model_class = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    model = model_class.from_pretrained(str(job.model.weights), dtype=getattr(torch, dtype), trust_remote_code=trust)
    tokenizer = (AutoProcessor if multimodal else AutoTokenizer).from_pretrained(str(job.model.weights),
                                                                                  trust_remote_code=trust)
    if job.adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(job.adapter.path))
        except (RuntimeError, ValueError) as exc:  # PEFT's words for "made for another model"
            if "size mismatch" not in str(exc) and "not found in the base model" not in str(exc):
                raise
            raise ExportError(f"The adapter in {job.adapter.path} does not fit this model's layers (it was trained on "
                              f"a model of another shape).") from exc
        model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


def save_merged(job: Job, model, tokenizer, dest: Path, dtype: str) -> None:
    """Write the merged model, its tokenizer with the chat template, and a generation config that stops at
    the template's end-of-turn token."""
    import torch

    template = chat_template(job, tokenizer)
    tokenizer.chat_template = template
    model.to(getattr(torch, dtype))
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        eos = generation.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        extra = [i for i in stop_token_ids(getattr(tokenizer, "tokenizer", tokenizer), template) if i not in eos]
        if extra:
            generation.eos_token_id = eos + extra
    model.save_pretrained(str(dest), max_shard_size=MAX_SHARD_SIZE, safe_serialization=True)
    tokenizer.save_pretrained(str(dest))


def write_merged(job: Job, dest: Path) -> None:
    """The merged export: the adapter merged into the base weights, saved in --outtype (default: the base
    model's own dtype)."""
    dtype = TORCH_DTYPES[job.outtype]
    # Merge in float32 when the result is float32 anyway; otherwise in the stored dtype (PEFT computes the
    # delta in float32 on the CPU), so a 16-bit model never needs twice its size in RAM.
    model, tokenizer = load_merged(job, "float32" if dtype == "float32" else native_dtype(job.model))
    job.echo(f"Writing the merged model ({dtype}) ...")
    save_merged(job, model, tokenizer, dest, dtype)


class MergedTarget(ExportTarget):
    """--format merged: a safetensors directory that plain transformers loads."""

    name = "merged"
    outtypes = tuple(TORCH_DTYPES)
    default_outtype = None  # the base model's own dtype
    exports_adapter = True
    full_precision_hint = " (quantize it with --format gguf --outtype q8_0)."

    def refuse_outtype(self, outtype: str) -> str:
        return (f"--format merged writes safetensors in f32, f16 or bf16, not {outtype}; use --format gguf "
                f"--outtype {outtype} for a quantized file.")

    def default_name(self, job: Job) -> str:
        return f"{job.name}-merged" if job.tag == "tuned" else f"{job.name}-{job.tag}-merged"

    def needed_bytes(self, job: Job) -> int:
        return int(parameters(job) * BYTES_PER_PARAMETER[job.outtype])

    def build(self, job: Job, dest: Path, staging: Path) -> None:
        write_merged(job, dest)
