"""One training run end to end: data, model, plan, loop, adapter, report."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import random
import statistics
import time
from dataclasses import asdict
from pathlib import Path

from handlers import handler_for_config
from handlers.base import is_small_model

from . import tensorboard_server
from .autostop import Monitor, rules_for
from .config import TrainConfig
from .data_sources import DataError, load_sources
from .formats import examples_from_source, task_type
from .loop import LoopState, Plan, StopSignal, Trainer
from .modeling import choose_placement, load_base_model, load_tokenizer, resolve_targets, wrap_with_lora
from .outputs import plot_history, publish_adapter
from .packing import pack
from .report import final_report, sample_answers
from .resume import NothingToResume, checkpoint_lora_shape, data_fingerprint, find_checkpoint, start_or_resume
from .sizing import auto_batch_rows, free_memory
from .tokenize import ensure_chat_template, tokenize_all

log = logging.getLogger("train")
MIN_VALIDATION_EXAMPLES = 5
SMALL_DATASET = 1000  # the training guide recommends circular training below this
DEFAULT_MAX_SEQ = 2048


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _model_info(workdir: Path) -> dict:
    try:
        return json.loads((workdir / "model_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def load_examples(cfg: TrainConfig):
    """Examples from every source, capped by --max-examples; DataError on empty data."""
    sources = load_sources(cfg.data)
    examples = []
    for source in sources:
        examples += examples_from_source(source, cfg.dataset_format)
    if not examples:
        raise DataError(f"The dataset is empty: no examples in {cfg.data}.")
    if cfg.max_examples:
        random.Random(cfg.seed).shuffle(examples)
        examples = examples[: cfg.max_examples]
    return sources, examples


def split_examples(tokenized: list, cfg: TrainConfig):
    """(train, validation, note): a seeded split, or the training data itself when too few are left over."""
    order = list(range(len(tokenized)))
    random.Random(cfg.seed).shuffle(order)
    n_val = round(len(order) * cfg.validation_split)
    if cfg.validation_split == 0 or n_val < MIN_VALIDATION_EXAMPLES or len(order) - n_val < 1:
        note = (f"{len(order)} examples leave {n_val} for validation (fewer than {MIN_VALIDATION_EXAMPLES}): "
                "validating on the training data, so auto-stop watches for perfect loss and plateaus")
        return tokenized, tokenized, note
    val = [tokenized[i] for i in order[:n_val]]
    train = [tokenized[i] for i in order[n_val:]]
    return train, val, f"{len(train)} training and {len(val)} validation examples"


def choose_max_length(cfg: TrainConfig, handler, model_config: dict) -> int:
    limit = cfg.max_seq_length or min(handler.max_sequence_length, DEFAULT_MAX_SEQ)
    model_limit = model_config.get("max_position_embeddings") or model_config.get("n_positions")
    return min(limit, model_limit) if model_limit else limit


def _batch_rows(cfg: TrainConfig, model_config: dict, row_length: int, placement, circular: bool,
                checkpointing: bool) -> tuple[int, int]:
    """(rows per step to start with, the most circular growth may reach; 0 = no cap)."""
    if cfg.batch_size:
        return cfg.batch_size, 0
    fit = auto_batch_rows(model_config, row_length, placement.device, placement.precision, checkpointing,
                          free_memory(placement.device))
    if circular:
        # circular mode grows the batch from one row: many small steps first, then steadier ones
        log.info("Batch: starts at 1 row, grows up to %d (auto: %s).", fit.rows, fit.reason)
        return 1, fit.rows
    log.info("Batch: %d rows of up to %d tokens (auto: %s).", fit.rows, row_length, fit.reason)
    return fit.rows, 0


def run(cfg: TrainConfig) -> int:
    """Train as configured; returns the process exit status."""
    model_path, output, workdir = cfg.resolved_paths()
    if cfg.tensorboard_only is not None:
        return tensorboard_server.serve_only(workdir, cfg.tensorboard_only)
    if not (model_path / "config.json").is_file():
        raise DataError(f"No model at {model_path} (config.json missing); install one with llm-installer.")
    started = time.monotonic()
    info = _model_info(workdir)
    model_config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    handler = handler_for_config(model_config)

    sources, examples = load_examples(cfg)
    if any(e.format == "vision" for e in examples) and not handler.multimodal:
        raise DataError(f"The dataset has image examples but {info.get('source', model_path.name)} "
                        f"({handler.name}) is a text-only model; use a multimodal model or remove them.")
    task = task_type(examples)
    tokenizer = load_tokenizer(model_path)
    fallback_used = ensure_chat_template(tokenizer, handler.chat_template_fallback)
    max_length = choose_max_length(cfg, handler, model_config)
    tokenized = tokenize_all(tokenizer, examples, max_length, cfg.train_on_prompt)
    truncated = sum(t.truncated for t in tokenized)
    formats = sorted({e.format for e in examples})
    log.info("Data: %d examples from %d source(s), formats %s, task type %s.", len(examples), len(sources),
             ", ".join(formats), "text generation" if task == "text" else "QA/instruction")
    if fallback_used:
        log.info("The model has no chat template: using the %s handler's fallback (saved with the adapter).",
                 handler.name)
    if truncated:
        log.warning("%d of %d examples were truncated to --max-seq-length %d tokens.", truncated, len(tokenized),
                    max_length)
    train_set, val_set, split_note = split_examples(tokenized, cfg)
    log.info("Split: %s.", split_note)
    if len(examples) < SMALL_DATASET and not cfg.circular and cfg.mode != "non-stop":
        log.info("Hint: %d examples is a small dataset; --circular trains it for many more passes and stops on "
                 "perfect loss.", len(examples))

    row_length = min(max_length, max(len(t.input_ids) for t in tokenized))
    train_rows = pack(train_set, row_length, cfg.seed)
    val_rows = pack(val_set, row_length, cfg.seed)
    packed_fill = sum(r.length for r in train_rows) / (len(train_rows) * row_length)
    log.info("Packing: %d examples into %d rows of up to %d tokens (%.0f%% filled; median example %d tokens).",
             len(train_set), len(train_rows), row_length, 100 * packed_fill,
             statistics.median(len(t.input_ids) for t in train_set))

    checkpoints = workdir / "checkpoints"
    checkpoint = find_checkpoint(cfg.resume, cfg.resume_from, checkpoints)
    placement = choose_placement(cfg.device if cfg.device != "auto" else info.get("defaults", {}).get("device",
                                                                                                       "auto"), handler)
    parameters = info.get("parameters") or 0
    model = load_base_model(model_path, placement, handler, cfg.method, cfg.use_8bit,
                            info.get("trust_remote_code", False))
    if not parameters:
        parameters = sum(p.numel() for p in model.parameters())
    if checkpoint is not None:  # the checkpoint fixes the adapter's shape
        shape = checkpoint_lora_shape(checkpoint, cfg.lora_r, cfg.lora_alpha, cfg.target_modules)
        rank, alpha, targets = shape.rank, shape.alpha, shape.targets
    else:
        rank = cfg.lora_r or handler.lora_rank(parameters)
        alpha = cfg.lora_alpha or 2 * rank
        targets = resolve_targets(model, handler, cfg.target_modules, parameters)
    if is_small_model(parameters) and not (cfg.target_modules and cfg.learning_rate):
        log.info("Small model (%s parameters, under 50M): LoRA on every linear layer and a %.0e base "
                 "learning rate by default.", f"{parameters:,}", handler.learning_rate(parameters))
    model = wrap_with_lora(model, targets, rank, alpha, cfg.lora_dropout, cfg.method == "qlora" or cfg.use_8bit,
                           handler.gradient_checkpointing)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    origin = " (the checkpoint's)" if checkpoint else "" if cfg.lora_r else " (auto from model size)"
    log.info("LoRA: rank %d%s, alpha %d, targets %s; %s trainable parameters (%.2f%% of %s).", rank, origin, alpha,
             ",".join(targets), f"{trainable:,}", 100 * trainable / max(1, parameters), f"{parameters:,}")

    preset = cfg.preset
    circular = cfg.circular
    epochs = cfg.max_circular_epochs if circular else (cfg.epochs or preset.epochs)
    lr = cfg.learning_rate or handler.learning_rate(parameters) * preset.lr_multiplier
    batch, max_batch = _batch_rows(cfg, model_config, row_length, placement, circular,
                                   handler.gradient_checkpointing and (cfg.method == "qlora" or cfg.use_8bit))
    plan = Plan(epochs=epochs, batch_size=min(batch, len(train_rows)), max_batch_size=max_batch,
                accumulation=cfg.gradient_accumulation_steps,
                learning_rate=lr, evals_per_epoch=1 if circular else preset.evals_per_epoch, circular=circular,
                adaptive=cfg.mode == "adaptive", constant_lr=cfg.mode in ("adaptive", "non-stop"),
                optimizer=cfg.optimizer, precision=placement.precision, device=placement.device,
                checkpoints=checkpoints, save_total_limit=cfg.save_total_limit, data_fingerprint=data_fingerprint(sources),
                chat_template=tokenizer.chat_template if fallback_used else None)
    rules = rules_for(task, cfg.patience, cfg.overfitting_threshold)
    autostop = not cfg.force_epochs and cfg.mode != "non-stop"
    monitor = Monitor(rules, enabled=autostop)
    log.info("Mode: %s%s — %s. %s on %s (%s), learning rate %.2e, batch %d rows x %d accumulation, optimizer %s.",
             cfg.mode, " + circular" if circular else "",
             "cycles through the data, growing the batch, one evaluation per cycle" if circular else preset.description,
             f"Up to {epochs:g} {'cycles' if circular else 'epochs'}" if not math.isinf(epochs) else "No epoch limit",
             placement.device, placement.precision, lr, plan.batch_size, plan.accumulation, cfg.optimizer)
    log.info("Auto-stop: %s", "off (--force-epochs)" if cfg.force_epochs else "off (non-stop runs until interrupted)"
             if cfg.mode == "non-stop" else f"{rules.task} rules: perfect loss {rules.perfect_loss}, overfitting "
             f"threshold {rules.overfitting_threshold:.0%}, patience {rules.patience}"
             + (", perplexity explosion > 100" if rules.watch_perplexity else ""))

    trainer = Trainer(model, plan, train_rows, val_rows, monitor, tokenizer.pad_token_id, cfg.seed,
                      status=lambda line: log.info(line))
    try:
        resume_dir = start_or_resume(trainer, checkpoint, checkpoints, cfg.data)
    except NothingToResume as done:
        log.info("%s", done)
        return 0
    writer = trainer.writer = _tensorboard_writer(workdir, cfg)
    board = None if cfg.no_tensorboard else tensorboard_server.start(workdir, cfg.tensorboard_port)
    try:
        reason, baseline = _train(trainer, resume_dir is None, writer)
        log.info("Stopped: %s.", reason)
        interrupted = reason.startswith("interrupted")
        last = trainer.save_last()
        if trainer.best_dir.is_dir():
            chosen, which = trainer.best_dir, f"best (step {monitor.best_step}, validation loss {monitor.best_val:.4f})"
        else:
            chosen, which = last, "last (no evaluation finished)"
        adapter_info = _adapter_info(cfg, info, model_path, sources, examples, formats, task, plan, rank, alpha, targets,
                                     rules, reason, monitor, trainer.state, baseline, which, started, truncated)
        previous = publish_adapter(chosen, output, adapter_info)
        _copy_logs(workdir, output)
        plot_history(trainer.state.history, workdir / "training_history.png")
        log.info("Adapter: %s -> %s%s", which, output, f" (previous adapter kept in {previous})" if previous else "")
        samples = None
        if not cfg.skip_test and not interrupted:
            samples = sample_answers(model, tokenizer, chosen, examples, val_set is not train_set, placement.device)
        print(final_report(adapter_info, samples), flush=True)
        return 130 if interrupted and cfg.mode != "non-stop" else 0
    finally:
        if board is not None:
            board.terminate()


def _train(trainer: Trainer, fresh: bool, writer) -> tuple[str, float | None]:
    """(stop reason, validation loss before training, for fresh runs) with a progress bar and signal handling."""
    from tqdm.auto import tqdm

    baseline = trainer.evaluate() if fresh else None
    progress = tqdm(total=trainer.total or None, initial=trainer.state.step, desc="training", unit="step",
                    dynamic_ncols=True, disable=None)
    try:
        with StopSignal() as stop:
            return trainer.run(stop, progress), baseline
    finally:
        progress.close()
        if writer:
            writer.close()


def _tensorboard_writer(workdir: Path, cfg: TrainConfig):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    run_name = dt.datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{cfg.mode}{'-circular' if cfg.circular else ''}"
    return SummaryWriter(log_dir=str(workdir / "logs" / "training" / run_name))


def _copy_logs(workdir: Path, output: Path) -> None:
    """Keep the run's TensorBoard logs with the adapter (./lora/logs, where the guide looks)."""
    import shutil

    source = workdir / "logs" / "training"
    if source.is_dir():
        shutil.copytree(source, output / "logs", dirs_exist_ok=True)


def _adapter_info(cfg, info, model_path, sources, examples, formats, task, plan, rank, alpha, targets, rules,
                  reason, monitor, state: LoopState, baseline, which, started, truncated) -> dict:
    best = monitor.best_val if math.isfinite(monitor.best_val) else None
    return {
        "base_model": info.get("source") or str(model_path),
        "base_model_revision": info.get("revision"),
        "base_model_path": str(model_path),
        "data": [{"source": s.origin, "sha256": s.sha256, "records": len(s.records)} for s in sources],
        "formats": formats,
        "task_type": task,
        "examples": len(examples),
        "truncated_examples": truncated,
        "mode": cfg.mode,
        "circular": cfg.circular,
        "force_epochs": cfg.force_epochs,
        "hyperparameters": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                            "lora_r": rank, "lora_alpha": alpha, "target_modules": targets,
                            "learning_rate": plan.learning_rate, "batch_size": plan.batch_size,
                            "epochs": None if math.isinf(plan.epochs) else plan.epochs,
                            "precision": plan.precision, "device": plan.device},
        "autostop": asdict(rules) | {"enabled": monitor.enabled},
        "stop_reason": reason,
        "adapter": which,
        "metrics": {"baseline_val_loss": baseline, "best_val_loss": best, "best_step": monitor.best_step,
                    "final_train_loss": next((h["train_loss"] for h in reversed(state.history)), None),
                    "baseline_perplexity": math.exp(min(baseline, 50)) if baseline is not None else None,
                    "best_perplexity": math.exp(min(best, 50)) if best is not None else None,
                    "steps": state.step, "evaluations": state.evals, "tokens": state.tokens},
        "adaptive_changes": state.changes,
        "timings": {"seconds": round(time.monotonic() - started, 2), "finished_at": _now()},
        "finished_at": _now(),
    }
