"""One training run end to end: data, model, plan, loop, adapter, report."""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import shutil
import statistics
import time
from pathlib import Path

from handlers.base import is_small_model
from handlers.chat_templates import ensure_chat_template
from training import tensorboard_server, vision
from training.autostop import Monitor, rules_for
from training.config import TrainConfig
from training.context import RunContext, RunData
from training.data.formats import Example, read_examples, refuse_images, task_type
from training.data.formats.llamafactory import catalogue_entries, catalogue_spec, rewrite
from training.data.mixing import is_mix, share_lines, split_sources
from training.data.preference import chosen_example
from training.data.sources import DataError, load_sources, read_file
from training.data.tokenize import CUT_OFF, cut_off_sentence, shown
from training.evaluate import evaluate_run
from training.guards import RunLock, check_disk, disk_full_error, is_disk_full
from training.launch import Topology, device_name, is_main_process, make_accelerator, resolve_processes
from training.loop import StopSignal, Trainer
from training.modeling import choose_placement, load_base_model, load_tokenizer, resolve_targets, wrap_with_lora
from training.objectives.registry import objective_for
from training.outputs import plot_history, publish_adapter, write_json
from training.planning import choose_max_length, plan_batches
from training.report import final_report, sample_answers
from training.resume import LoraShape, NothingToResume, checkpoint_lora_shape, data_fingerprint, find_checkpoint, start_or_resume
from training.runfile import RUN_FILE, run_file_text, saved_config
from training.schedule import Plan
from training.start_adapter import load_into, start_adapter_for
from training.summary import adapter_info

log = logging.getLogger("train")
SMALL_DATASET = 1000  # the training guide recommends circular training below this


def load_examples(cfg: TrainConfig):
    """(sources, examples, per-source reads) from every source, capped by --max-examples; DataError on empty data.
    A record with no answer is skipped and counted (refused with --strict-data)."""
    import random

    sources = _catalogue_sources(cfg.data) or load_sources(cfg.data)
    reads = [read_examples(source, cfg.dataset_format, cfg.strict_data) for source in sources]
    examples = [example for read in reads for example in read.examples]
    if not examples:
        raise DataError(f"The dataset is empty: no examples in {cfg.data}.")
    if cfg.max_examples:
        random.Random(cfg.seed).shuffle(examples)
        examples = examples[: cfg.max_examples]
    return sources, examples, reads


def _catalogue_sources(spec: str) -> list | None:
    """The sources of a LLaMA-Factory catalogue when --data names one (DIR, DIR/dataset_info.json, optionally
    :NAME,NAME), their records rewritten as its entries declare; None for any other --data."""
    found = catalogue_spec(spec)
    if found is None:
        return None
    path, names = found
    sources, entries = [], catalogue_entries(path, names)
    for entry in entries:
        source = read_file(entry.path)
        source.records = [rewrite(record, entry, f"{source.origin}, record {i + 1}")
                          for i, record in enumerate(source.records)]
        source.entry = f"{path}:{entry.name}"
        sources.append(source)
    log.info("LLaMA-Factory catalogue %s: %s.", path, ", ".join(e.name for e in entries))
    return sources


def run(cfg: TrainConfig) -> int:
    """Train as configured (holding the model directory's lock); returns the process exit status."""
    model_path, output, workdir = cfg.resolved_paths()
    if cfg.tensorboard_only is not None:
        return tensorboard_server.serve_only(workdir, cfg.tensorboard_only)
    if not (model_path / "config.json").is_file():
        raise DataError(f"No model at {model_path} (config.json missing); install one with llm-installer.")
    if cfg.dry_run:
        return _dry_run(cfg, model_path, output, workdir)
    if not is_main_process():
        return _run(cfg, model_path, output, workdir)
    with RunLock(workdir):
        for leftover in output.parent.glob(f".{output.name}.tmp-*"):  # a killed run's half-published adapter
            shutil.rmtree(leftover, ignore_errors=True)
        return _run(cfg, model_path, output, workdir)


def _prepare_data(ctx: RunContext) -> RunData:
    cfg, handler, info, model_path = ctx.cfg, ctx.handler, ctx.info, ctx.model_path
    sources, examples, reads = load_examples(cfg)
    if not ctx.multimodal:
        refuse_images(examples, f"{info.get('source', model_path.name)} ({handler.name})")
    max_length = choose_max_length(cfg.max_seq_length, handler.max_sequence_length, ctx.model_config)
    objective = objective_for(cfg, examples, ctx.multimodal)
    if ctx.multimodal:  # SFT: the processor renders and tokenizes image conversations
        tokenizer, tokenized, fallback_used = vision.prepare(model_path, examples, max_length, cfg.train_on_prompt,
                                                             info.get("trust_remote_code", False))
        objective.examples, objective.skipped = examples, []
    else:
        tokenizer = load_tokenizer(model_path)
        fallback_used = ensure_chat_template(tokenizer, handler.chat_template_fallback)
        tokenized = objective.tokenize(tokenizer, examples, max_length, cfg.train_on_prompt)
    # records skipped while reading (no answer) join those skipped while tokenizing (answer cut off)
    objective.skipped = [(Example(r.format or "", r.origin, i), why) for r in reads for i, why in r.skipped] + \
        objective.skipped
    examples = objective.examples  # the kept examples, one per window of a long text document
    if not tokenized:
        raise DataError(f"No example is left to train on: {_skip_note(objective.skipped, max_length)}.")
    truncated = sum(t.truncated for t in tokenized)
    formats = sorted({e.format for e in examples})
    task = task_type(examples)
    log.info("Data: %d examples from %d source(s), formats %s, task type %s.", len(examples), len(sources),
             ", ".join(formats), {"text": "text generation", "preference": "preference pairs"}.get(task, "QA/instruction"))
    if fallback_used:
        log.info("The model has no chat template: using the %s handler's fallback (saved with the adapter).",
                 handler.name)
    if truncated:
        dropped = sum(getattr(t, "dropped", 0) for t in tokenized)
        log.warning("%d of %d examples were truncated to --max-seq-length %d tokens (%s tokens dropped).", truncated,
                    len(tokenized), max_length, f"{dropped:,}")
    if objective.skipped:
        log.warning("Skipped %s.", _skip_note(objective.skipped, max_length))
    _warn_placeholders(examples)
    return RunData(sources, examples, tokenizer, tokenized, objective, fallback_used, task, formats, truncated)


DRY_RUN_SHOWN, DRY_RUN_JSON_EXAMPLES = 3, 20  # examples --dry-run prints as text, and in its JSON


def _dry_run(cfg: TrainConfig, model_path: Path, output: Path, workdir: Path) -> int:
    """--dry-run: the data read, detected, converted, tokenized, split and planned as a run would, printed (as
    text, or one JSON object with --json) without loading the model's weights or writing anything."""
    import json
    import sys

    if cfg.json:  # the log goes to stderr so that stdout is the JSON object alone
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)
    ctx = RunContext.open(cfg, model_path, output, workdir, time.monotonic())
    data = ctx.data = _prepare_data(ctx)
    evals_per_epoch = 1 if cfg.circular else cfg.preset.evals_per_epoch
    split, _shares = split_sources(data.tokenized, data.examples, data.sources, cfg.validation_split, cfg.seed,
                                   evals_per_epoch)
    report = _dry_run_report(cfg, data, _dry_run_plan(ctx, split), split)
    if cfg.json:
        print(json.dumps(report, ensure_ascii=False), flush=True)
        return 0
    print(_dry_run_text(report), flush=True)
    return 0


def _dry_run_plan(ctx: RunContext, split) -> dict:
    """The plan a run would make from this data: batch, steps per epoch and epochs (no weights loaded)."""
    cfg, handler = ctx.cfg, ctx.handler
    placement = choose_placement(cfg.device if cfg.device != "auto" else ctx.info.get("defaults", {}).get(
        "device", "auto"), handler)
    processes = resolve_processes(cfg.num_processes, placement.device)
    quantized = cfg.method == "qlora" or cfg.use_8bit
    checkpointing = cfg.gradient_checkpointing == "on" or (
        cfg.gradient_checkpointing == "auto" and quantized and handler.gradient_checkpointing)
    max_length = choose_max_length(cfg.max_seq_length, handler.max_sequence_length, ctx.model_config)
    row_length = min(max(len(t.input_ids) for t in ctx.data.tokenized), max_length)
    batches = plan_batches(cfg.batch_size, cfg.gradient_accumulation_steps, len(split.train),
                           [len(t.input_ids) for t in split.train], row_length, ctx.model_config,
                           "cuda:0" if placement.device == "cuda" else placement.device, placement.precision,
                           checkpointing, processes, cfg.circular)
    epochs = cfg.max_circular_epochs if cfg.circular else (cfg.epochs or cfg.preset.epochs)
    return {"device": placement.device, "max_seq_length": max_length, "examples_per_step": batches.examples_per_step,
            "steps_per_epoch": math.ceil(len(split.train) / batches.examples_per_step),
            "epochs": None if math.isinf(epochs) else epochs, "train_examples": len(split.train),
            "validation_examples": len(split.val)}


def _shown_example(tokenizer, example, item) -> dict:
    """One example as --dry-run shows it: its text with the trained parts marked, and those parts."""
    sequence = getattr(item, "chosen", item)  # a DPO pair or KTO answer: its (chosen) answer's sequence
    text, trained = shown(tokenizer, sequence)
    entry = {"source": example.origin, "record": example.index + 1, "format": example.format, "text": text,
             "trained": trained}
    if example.label is not None:
        entry["label"] = "desirable" if example.label else "undesirable"
    elif getattr(item, "rejected", None) is not None:
        rejected_text, rejected_trained = shown(tokenizer, item.rejected)
        entry["rejected"] = {"text": rejected_text, "trained": rejected_trained}
    return entry


def _dry_run_report(cfg: TrainConfig, data: RunData, plan: dict, split) -> dict:
    """The dry run as one JSON-ready object: per source its format and counts, the method, the plan and the
    first examples rendered."""
    kept: dict[str, int] = {}
    for example in data.examples:
        kept[example.origin] = kept.get(example.origin, 0) + 1
    sources = []
    for source in data.sources:
        skipped = [(e, why) for e, why in data.objective.skipped if e.origin == source.origin]
        formats = sorted({e.format for e in data.examples if e.origin == source.origin} | {
            e.format for e, _ in skipped if e.format})
        sources.append({"path": source.origin, "format": ",".join(formats) or None, "records": len(source.records),
                        "examples": kept.get(source.origin, 0), "skipped": len(skipped),
                        "skipped_records": [{"record": e.index + 1, "reason": why} for e, why in skipped[:20]]})
    limit = min(DRY_RUN_JSON_EXAMPLES, cfg.max_examples or DRY_RUN_JSON_EXAMPLES)
    examples = [_shown_example(data.tokenizer, e, t) for e, t in
                list(zip(data.examples, data.tokenized, strict=True))[:limit]]
    return {"sources": sources, "method": data.objective.name, "task": data.task, "plan": plan,
            "truncated": data.truncated, "examples": examples}


def _dry_run_text(report: dict) -> str:
    """The dry run for a person: one line per source, the method and plan, and the first examples."""
    lines = ["Dry run: nothing is trained and no weights are loaded."]
    for source in report["sources"]:
        reasons = sorted({r["reason"] for r in source["skipped_records"]})
        lines.append(f"Source {source['path']}: format {source['format']}, {source['records']} records -> "
                     f"{source['examples']} examples" + (f", {source['skipped']} skipped ({'; '.join(reasons)}; "
                                                         "records " + ", ".join(str(r["record"]) for r in
                                                         source["skipped_records"][:5]) + ")"
                                                         if source["skipped"] else ""))
    plan = report["plan"]
    epochs = "no epoch limit" if plan["epochs"] is None else f"up to {plan['epochs']:g} epoch(s)"
    lines.append(f"Method: {report['method']}; {plan['train_examples']} training and {plan['validation_examples']} "
                 f"validation examples; {plan['examples_per_step']} examples per step, {plan['steps_per_epoch']} "
                 f"steps per epoch, {epochs}; sequence length {plan['max_seq_length']} on {plan['device']}.")
    shown_examples = report["examples"][:DRY_RUN_SHOWN]
    for entry in shown_examples:
        label = f", {entry['label']}" if "label" in entry else ""
        lines += ["", f"--- {entry['source']} record {entry['record']} ({entry['format']}{label}); "
                      "trained parts between ⟦ and ⟧ ---", entry["text"]]
        if "rejected" in entry:
            lines += ["--- rejected answer ---", entry["rejected"]["text"]]
    return "\n".join(lines)


def _skip_note(skipped: list, max_length: int) -> str:
    """The skipped records in one phrase: how many for each reason, and the first few by file and number."""
    cut = sum(1 for _, why in skipped if why == CUT_OFF)
    empty = [(e, why) for e, why in skipped if why != CUT_OFF]
    parts = [cut_off_sentence(skipped, max_length)] if cut else []
    if empty:
        first = ", ".join(f"{e.origin} record {e.index + 1}" for e, _ in empty[:3])
        parts.append(f"{len(empty)} record(s) with nothing to learn from ({empty[0][1]}), first: {first}")
    return "; ".join(parts) + " (--strict-data refuses such data instead)"


def _warn_placeholders(examples: list) -> None:
    """Unreplaced template placeholders ({{name}}, as LLaMA-Factory's identity.json ships) are trained as written:
    say so once."""
    import re

    pattern = re.compile(r"\{\{\s*\w+\s*\}\}")
    hits = [e for e in examples if any(pattern.search(str(m.get("content") or "")) for m in e.messages
                                       if m["role"] == "assistant") or pattern.search(e.completion or "")]
    if hits:
        names = sorted({m for e in hits for msg in e.messages for m in pattern.findall(str(msg.get("content") or ""))}
                       | {m for e in hits for m in pattern.findall(e.completion or "")})
        log.warning("%d example(s) contain unreplaced placeholders in their answers (%s, first: %s record %d); "
                    "they are trained as written: replace them in the data first.", len(hits), ", ".join(names[:5]),
                    hits[0].origin, hits[0].index + 1)


def _run(cfg: TrainConfig, model_path: Path, output: Path, workdir: Path) -> int:
    ctx = RunContext.open(cfg, model_path, output, workdir, time.monotonic())
    info, model_config, handler = ctx.info, ctx.model_config, ctx.handler
    data = ctx.data = _prepare_data(ctx)
    sources, examples, tokenizer, tokenized = data.sources, data.examples, data.tokenizer, data.tokenized
    circular = cfg.circular
    evals_per_epoch = 1 if circular else cfg.preset.evals_per_epoch
    split, shares = split_sources(tokenized, examples, sources, cfg.validation_split, cfg.seed, evals_per_epoch)
    log.info("Split: %s.", split.note)
    for line in share_lines(shares) if is_mix(shares) else []:
        log.info("%s", line)
    if len(examples) < SMALL_DATASET and not circular and cfg.mode != "non-stop":
        log.info("Hint: %d examples is a small dataset; --circular trains it for many more passes and stops on "
                 "perfect loss.", len(examples))

    checkpoints = workdir / "checkpoints"
    checkpoint = find_checkpoint(cfg.resume, cfg.resume_from, checkpoints)
    start = start_adapter_for(cfg, checkpoint, workdir, model_path, info)
    placement = choose_placement(cfg.device if cfg.device != "auto" else info.get("defaults", {}).get("device",
                                                                                                       "auto"), handler)
    processes = resolve_processes(cfg.num_processes, placement.device)
    from accelerate import PartialState

    device = PartialState(cpu=placement.device == "cpu").device
    quantized = cfg.method == "qlora" or cfg.use_8bit
    checkpointing = cfg.gradient_checkpointing == "on" or (
        cfg.gradient_checkpointing == "auto" and quantized and handler.gradient_checkpointing)
    row_length = min(max(len(t.input_ids) for t in tokenized), choose_max_length(
        cfg.max_seq_length, handler.max_sequence_length, model_config))
    from accelerate.utils import set_seed

    set_seed(cfg.seed)  # the LoRA initialisation is the same in every process and every run with this seed
    model = load_base_model(model_path, placement, handler, cfg.method, cfg.use_8bit,
                            info.get("trust_remote_code", False), device=device)
    lengths = [len(t.input_ids) for t in split.train]
    batches = plan_batches(cfg.batch_size, cfg.gradient_accumulation_steps, len(split.train), lengths, row_length,
                           model_config, device_name(device), placement.precision, checkpointing, processes, circular)
    parameters = info.get("parameters") or sum(p.numel() for p in model.parameters())
    rank, alpha, targets = (start.rank, start.alpha, start.targets) if start else _lora_shape(
        cfg, checkpoint, model, handler, parameters)
    if is_small_model(parameters) and not (cfg.target_modules and cfg.learning_rate):
        log.info("Small model (%s parameters, under 50M): LoRA on every linear layer and a %.0e base "
                 "learning rate by default.", f"{parameters:,}", handler.learning_rate(parameters))
    targets, exclude = vision.lora_targets(model, handler, targets, cfg.train_vision_tower,
                                           chosen_by_user=bool(cfg.target_modules or checkpoint))
    model = wrap_with_lora(model, targets, rank, alpha, cfg.lora_dropout, quantized,
                           checkpointing or (quantized and handler.gradient_checkpointing), exclude)
    if start:
        load_into(model, start)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    origin = " (the checkpoint's)" if checkpoint else " (--from-adapter)" if start else "" if cfg.lora_r else \
        " (auto from model size)"
    log.info("LoRA: rank %d%s, alpha %d, targets %s; %s trainable parameters (%.2f%% of %s).", rank, origin, alpha,
             ",".join(targets), f"{trainable:,}", 100 * trainable / max(1, parameters), f"{parameters:,}")
    if is_main_process():
        check_disk(workdir, trainable, cfg.save_total_limit, output)

    epochs = cfg.max_circular_epochs if circular else (cfg.epochs or cfg.preset.epochs)
    lr = cfg.learning_rate or handler.learning_rate(parameters) * cfg.preset.lr_multiplier * (
        data.objective.learning_rate_factor)
    plan = Plan(epochs=epochs, examples_per_step=batches.examples_per_step, accumulation=batches.accumulation,
                learning_rate=lr, evals_per_epoch=evals_per_epoch, circular=circular, adaptive=cfg.mode == "adaptive",
                constant_lr=cfg.mode in ("adaptive", "non-stop"), optimizer=cfg.optimizer,
                precision=placement.precision, device=placement.device, checkpoints=checkpoints,
                save_total_limit=cfg.save_total_limit, row_length=row_length, processes=processes,
                strategy=cfg.strategy, eval_rows=batches.eval_rows, max_examples_per_step=batches.max_examples_per_step,
                data_fingerprint=data_fingerprint(sources),
                chat_template=tokenizer.chat_template if data.fallback_used else None)
    ctx.plan, ctx.lora = plan, LoraShape(rank, alpha, targets)
    _log_plan(cfg, plan, batches, split, placement, checkpointing)
    rules = ctx.rules = rules_for(data.task, cfg.patience, cfg.overfitting_threshold)
    monitor = Monitor(rules, enabled=not cfg.force_epochs and cfg.mode != "non-stop")
    _log_autostop(cfg, rules, bool(split.val))

    accelerator = make_accelerator(Topology(processes, cfg.strategy, cfg.zero_stage), placement.device,
                                   placement.precision, batches.accumulation, batches.micro_batch)
    trainer = Trainer(model, plan, split.train, split.val, monitor, tokenizer.pad_token_id, cfg.seed, accelerator,
                      status=lambda line: log.info(line), use_liger=placement.device == "cuda",
                      objective=data.objective)
    try:
        resumed = start_or_resume(trainer, checkpoint, checkpoints, cfg.data)
    except NothingToResume as done:
        log.info("%s", done)
        return 0
    data.objective.before_training(trainer, split, start, checkpoints, resumed)
    main = is_main_process()
    writer = trainer.writer = _tensorboard_writer(workdir, cfg) if main else None
    board = tensorboard_server.start(workdir, cfg.tensorboard_port) if main and not cfg.no_tensorboard else None
    try:
        reason, baseline = _train(trainer, resumed is None, writer)
        last = trainer.save_last()
        if not main:
            return 0
        log.info("Stopped: %s.", reason)
        interrupted = reason.startswith("interrupted")
        if trainer.best_dir.is_dir():
            kind = "validation" if split.val else "training"
            chosen, which = trainer.best_dir, f"best (step {monitor.best_step}, {kind} loss {monitor.best_val:.4f})"
        else:
            chosen, which = last, "last (no evaluation finished)"
        summary = adapter_info(ctx, monitor, trainer.state, reason, baseline, which, resumed, bool(split.val))
        summary.update(data.objective.summary(trainer, monitor, bool(split.val)))
        summary["config"] = saved_config(cfg, output, workdir)  # also lora/run.yaml: --config repeats the run
        summary["mix"] = [share.as_dict() for share in shares] if is_mix(shares) else None
        previous = publish_adapter(chosen, output, summary, {RUN_FILE: run_file_text(summary["config"])})
        _copy_logs(workdir, output)
        plot_history(trainer.state.history, workdir / "training_history.png")
        log.info("Adapter: %s -> %s%s", which, output, f" (previous adapter kept in {previous})" if previous else "")
        samples = None
        if not cfg.skip_test and not interrupted:
            multimodal = ctx.multimodal
            samples = vision.sample_answers(model, model_path, chosen, examples, bool(split.val), device_name(
                device)) if multimodal else sample_answers(
                model, tokenizer, chosen, examples, bool(split.val), device_name(device))
            summary["evaluation"] = {"skipped": "image examples: the base/tuned comparison reads text data only"} \
                if multimodal else evaluate_run(model, tokenizer, chosen, *_evaluated(examples, tokenized, split.val),
                                                device_name(device))
            write_json(output / "adapter_info.json", summary)
        print(final_report(summary, samples, workdir), flush=True)
        return 130 if interrupted and cfg.mode != "non-stop" else 0
    except (OSError, RuntimeError) as exc:
        if is_disk_full(exc):
            raise disk_full_error(workdir, trainable, cfg.save_total_limit, output) from exc
        raise
    finally:
        if board is not None:
            board.terminate()


def _evaluated(examples: list, tokenized: list, validation: list) -> tuple[list, list, list]:
    """(examples, tokenized, validation) for the base-vs-tuned comparison: labelled (KTO) data is compared on its
    desirable answers only, as SFT examples (an undesirable answer is never a reference to score against)."""
    if not any(e.label is not None for e in examples):
        return examples, tokenized, validation
    kept = [(chosen_example(e), t) for e, t in zip(examples, tokenized, strict=True) if e.label]
    held = {id(t) for t in validation}
    return [e for e, _ in kept], [t for _, t in kept], [t for _, t in kept if id(t) in held]


def _lora_shape(cfg: TrainConfig, checkpoint, model, handler, parameters: int):
    if checkpoint is not None:  # the checkpoint fixes the adapter's shape
        shape = checkpoint_lora_shape(checkpoint, cfg.lora_r, cfg.lora_alpha, cfg.target_modules)
        return shape.rank, shape.alpha, shape.targets
    rank = cfg.lora_r or handler.lora_rank(parameters)
    return rank, cfg.lora_alpha or 2 * rank, resolve_targets(model, handler, cfg.target_modules, parameters)


def _log_plan(cfg: TrainConfig, plan: Plan, batches, split, placement, checkpointing: bool) -> None:
    lengths = [len(t.input_ids) for t in split.train]
    unpacked = split.train[0].images is not None  # a multimodal model's rows (training/vision.py)
    rows = "one example per row, padded (not packed: multimodal model), rows" if unpacked else "packed into rows"
    log.info("Batch: %d examples per optimizer step (%d per micro-batch x %d accumulation x %d process(es)%s), %s "
             "of up to %d tokens%s (median example %d tokens); %s.",
             plan.examples_per_step, batches.micro_batch, plan.accumulation, plan.processes,
             f", {plan.strategy}" if plan.processes > 1 else "", rows, plan.row_length,
             "" if unpacked else " without padding", statistics.median(lengths),
             batches.reason)
    if plan.circular:
        log.info("Circular: the step starts at %d example(s) and grows every 5 cycles%s.", plan.examples_per_step,
                 f" up to {plan.max_examples_per_step}" if plan.max_examples_per_step else "")
    epochs = plan.epochs
    description = cfg.preset.description
    if cfg.epochs is not None:  # --epochs replaces the mode's own count: the line names only what will happen
        description = re.sub(r", \d+ epochs?", "", description)
    unit = "cycle" if plan.circular else "epoch"
    log.info("Mode: %s%s — %s. %s on %s (%s%s), learning rate %.2e, optimizer %s.", cfg.mode,
             " + circular" if plan.circular else "",
             "cycles through the data, growing the batch, one evaluation per cycle" if plan.circular
             else description,
             f"Up to {epochs:g} {unit}{'' if epochs == 1 else 's'}{' (--epochs)' if cfg.epochs is not None else ''}"
             if not math.isinf(epochs) else "No epoch limit",
             placement.device, placement.precision, ", gradient checkpointing" if checkpointing else "",
             plan.learning_rate, cfg.optimizer)


def _log_autostop(cfg: TrainConfig, rules, has_validation: bool) -> None:
    if cfg.force_epochs and cfg.mode == "non-stop":
        log.info("--force-epochs changes nothing with --mode non-stop: auto-stop is already off.")
    if cfg.force_epochs:
        log.info("Auto-stop: off (--force-epochs).")
    elif cfg.mode == "non-stop":
        log.info("Auto-stop: off (non-stop runs until interrupted).")
    else:
        watched = "validation loss" if has_validation else "running training loss (no validation set)"
        log.info("Auto-stop: %s rules on the %s: perfect loss %s, overfitting threshold %.0f%%, patience %d%s.",
                 rules.task, watched, rules.perfect_loss, 100 * rules.overfitting_threshold, rules.patience,
                 ", perplexity explosion > 100" if rules.watch_perplexity and has_validation else "")


def _train(trainer: Trainer, fresh: bool, writer) -> tuple[str, float | None]:
    """(stop reason, validation loss before training for fresh runs) with a progress bar and signal handling."""
    from tqdm.auto import tqdm

    baseline = trainer.evaluate() if fresh else None
    progress = tqdm(total=trainer.total or None, initial=trainer.state.step, desc="training", unit="step",
                    dynamic_ncols=True, disable=None if trainer.main else True)
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
    source = workdir / "logs" / "training"
    if source.is_dir():
        shutil.copytree(source, output / "logs", dirs_exist_ok=True)
