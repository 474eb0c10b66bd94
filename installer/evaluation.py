"""`llm-installer eval`: an installed model with and without its adapter on held-out data, side by side, and on
the general reference (what the tuning cost outside that data; training/forgetting/).

This module finds the model, the adapter and the data and loads them; the metrics are training/evaluate.py's
(train.sh runs the same comparison on its validation set at the end of a run).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.adapter import AdapterError, inspect_adapter
from core.errors import UserError
from core.imports import hide_bitsandbytes
from core.model_dir import ModelDir
from handlers import handler_for_config
from handlers.chat_templates import bound_rendering, ensure_chat_template
from training.data.formats import examples_from_source, refuse_images, task_type
from training.data.sources import DataError, load_sources
from training.evaluate import compare, prepare
from training.forgetting.compare import general_comparison
from training.forgetting.setup import rendering_for
from training.modeling import choose_placement, load_base_model, load_tokenizer
from training.planning import choose_max_length

SAMPLE_SEED = 42


class EvalError(UserError, ValueError):
    """The evaluation cannot run as asked; the message says why."""


@dataclass
class EvalOptions:
    """What `llm-installer eval` was asked for."""

    data: str
    adapter: Path | None = None
    no_lora: bool = False
    no_base: bool = False
    max_examples: int | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None
    device: str | None = None
    dataset_format: str | None = None
    no_general: bool = False


def evaluate_installed(model_dir: Path, options: EvalOptions, echo: Callable[[str], None] = print) -> dict:
    """{"base": metrics, "tuned": metrics, "setup": ...} for the installed model in `model_dir` on `options.data`."""
    started = time.monotonic()
    _check_options(options)
    model = ModelDir(Path(model_dir).expanduser().resolve())
    info = _ready_info(model)
    adapter = _choose_adapter(model, info, options)
    examples = _examples(options)
    config = json.loads((model.weights / "config.json").read_text(encoding="utf-8"))

    handler = handler_for_config(config)
    if not handler.multimodal:
        refuse_images(examples, f"{info.get('source', model.root.name)} ({handler.name})")
    elif any(example.images for example in examples):
        raise EvalError(f"{options.data} has image examples, and llm-installer eval compares text data only; "
                        "evaluate with text examples, or see the sample answers of ./train.sh.")
    tokenizer = _tokenizer(model, adapter, handler)
    data = _prepare(tokenizer, examples, handler, config)
    echo(f"Evaluating {len(data.items)} examples from {options.data} "
         f"({'base model only' if adapter is None else f'base and tuned ({adapter.path})'}) ...")
    loaded, device = _load(model, info, handler, adapter, options.device)

    result = compare(loaded, tokenizer, data, base=not options.no_base, tuned=adapter is not None,
                     max_new_tokens=options.max_new_tokens, batch_size=options.batch_size, device=device)
    if adapter is not None and not options.no_general and not handler.multimodal:  # as train.sh: text models
        echo("Comparing them on the general reference (the base model's own answers to general prompts) ...")
        result["general"] = general_comparison(loaded, tokenizer, model.weights, model.root, device,
                                               rendering_for(task_type(examples)))
    result["setup"].update(data=options.data, adapter=str(adapter.path) if adapter else None,
                           seconds=round(time.monotonic() - started, 2))
    return result


def _check_options(options: EvalOptions) -> None:
    if options.no_lora and options.no_base:
        raise EvalError("--no-lora and --no-base leave nothing to evaluate; give at most one of them.")
    if options.no_lora and options.adapter is not None:
        raise EvalError("Give either --adapter or --no-lora, not both.")
    for flag, value in (("--max-examples", options.max_examples), ("--max-new-tokens", options.max_new_tokens),
                        ("--batch-size", options.batch_size)):
        if value is not None and value < 1:
            raise EvalError(f"{flag} must be at least 1.")


def _ready_info(model: ModelDir) -> dict:
    if not model.info_path.is_file() and not model.marker.exists():
        raise EvalError(f"{model.root} is not an installed model (no model_info.json); install one with "
                        "llm-installer install.")
    if model.status() != "ready":
        raise EvalError(f"The install in {model.root} is incomplete; run the same install command again to finish it.")
    return model.read_info() or {}


def _choose_adapter(model: ModelDir, info: dict, options: EvalOptions):
    """The adapter to compare with the base model (checked against it), or None with --no-lora."""
    if options.no_lora:
        return None
    path = Path(options.adapter).expanduser().resolve() if options.adapter is not None else model.adapter
    if not (path / "adapter_config.json").is_file():
        if options.adapter is not None:
            raise EvalError(f"--adapter {path}: no adapter there (adapter_config.json missing).")
        raise EvalError(f"No adapter in {path}: train one with ./train.sh, give --adapter PATH, or add --no-lora to "
                        "evaluate the base model alone.")
    try:
        return inspect_adapter(path, model.root, info)
    except AdapterError as exc:
        raise EvalError(str(exc).replace("serve it with that model, or use --no-lora",
                                         "evaluate it with that model")) from exc


def _examples(options: EvalOptions) -> list:
    """The examples of --data (every format train.sh reads), a seeded sample of --max-examples in file order."""
    examples = []
    for source in load_sources(options.data):
        examples += examples_from_source(source, options.dataset_format)
    if not examples:
        raise DataError(f"The dataset is empty: no examples in {options.data}.")
    if options.max_examples and options.max_examples < len(examples):
        chosen = sorted(random.Random(SAMPLE_SEED).sample(range(len(examples)), options.max_examples))
        examples = [examples[i] for i in chosen]
    return examples


def _tokenizer(model: ModelDir, adapter, handler):
    """The tokenizer with the chat template the adapter was trained with (its own, the model's or the fallback)."""
    tokenizer = load_tokenizer(model.weights)
    if adapter is not None and adapter.chat_template:
        tokenizer.chat_template = adapter.chat_template
        bound_rendering(tokenizer, f"the adapter in {adapter.path}")
    else:
        ensure_chat_template(tokenizer, handler.chat_template_fallback)
    return tokenizer


def _prepare(tokenizer, examples: list, handler, config: dict):
    data = prepare(tokenizer, examples, choose_max_length(None, handler.max_sequence_length, config))
    if not data.items:
        raise DataError(f"None of the {len(examples)} examples has an answer left after truncation to the model's "
                        "length limit.")
    return data


def _load(model: ModelDir, info: dict, handler, adapter, device: str | None):
    """The base weights on the device (with the adapter attached when there is one) and the torch device."""
    requested = device or (info.get("defaults") or {}).get("device") or "auto"
    placement = choose_placement(requested, handler)
    hide_bitsandbytes()  # eval loads unquantized weights: peft's import of it would only cost start-up time
    loaded = load_base_model(model.weights, placement, handler, "lora", False, info.get("trust_remote_code", False))
    if adapter is None:
        return loaded, placement.device
    from peft import PeftModel

    try:
        loaded = PeftModel.from_pretrained(loaded, str(adapter.path))
    except (RuntimeError, ValueError) as exc:  # PEFT's words for "made for another model"
        if "size mismatch" not in str(exc) and "not found in the base model" not in str(exc):
            raise
        raise EvalError(f"The adapter in {adapter.path} does not fit this model's layers (it was trained on a "
                        "model of another shape).") from exc
    return loaded, placement.device
