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
from training import tensorboard_server, threads, vision
from training.autostop import Monitor, rules_for
from training.config import TrainConfig
from training.context import RunContext
from training.data.mixing import is_mix, share_lines, split_sources
from training.data.preference import chosen_example
from training.data.sources import DataError
from training.dry_run import dry_run
from training.evaluate import evaluate_run
from training.forgetting.report import kept_description, with_general
from training.forgetting.setup import check_replay, mix_replay, open_reference, start_watch
from training.guards import RunLock, check_disk, disk_full_error, is_disk_full
from training.launch import Topology, device_name, is_main_process, make_accelerator, resolve_processes
from training.loop import StopSignal, Trainer
from training.modeling import choose_placement, load_base_model, resolve_targets, wrap_with_lora
from training.outputs import plot_history, publish_adapter, write_json
from training.planning import choose_max_length, plan_batches
from training.preparation import prepare_data
from training.report import final_report, sample_answers
from training.resume import LoraShape, NothingToResume, checkpoint_lora_shape, data_fingerprint, find_checkpoint, start_or_resume
from training.runfile import RUN_FILE, run_file_text, saved_config
from training.schedule import Plan
from training.start_adapter import load_into, start_adapter_for
from training.summary import adapter_info

log = logging.getLogger("train")
SMALL_DATASET = 1000  # the training guide recommends circular training below this


def run(cfg: TrainConfig) -> int:
    """Train as configured (holding the model directory's lock); returns the process exit status."""
    model_path, output, workdir = cfg.resolved_paths()
    if cfg.tensorboard_only is not None:
        return tensorboard_server.serve_only(workdir, cfg.tensorboard_only)
    if not (model_path / "config.json").is_file():
        raise DataError(f"No model at {model_path} (config.json missing); install one with llm-installer.")
    if cfg.dry_run:
        return dry_run(cfg, model_path, output, workdir)
    if not is_main_process():
        return _run(cfg, model_path, output, workdir)
    with RunLock(workdir):
        for leftover in output.parent.glob(f".{output.name}.tmp-*"):  # a killed run's half-published adapter
            shutil.rmtree(leftover, ignore_errors=True)
        return _run(cfg, model_path, output, workdir)


def _run(cfg: TrainConfig, model_path: Path, output: Path, workdir: Path) -> int:
    ctx = RunContext.open(cfg, model_path, output, workdir, time.monotonic())
    threads.SAMPLE.start()  # the machine's load while the model loads: how many cores are free for the run
    info, model_config, handler = ctx.info, ctx.model_config, ctx.handler
    data = ctx.data = prepare_data(ctx)
    sources, examples, tokenizer, tokenized = data.sources, data.examples, data.tokenizer, data.tokenized
    circular = cfg.circular
    evals_per_epoch = 1 if circular else cfg.preset.evals_per_epoch
    split, shares = split_sources(tokenized, examples, sources, cfg.validation_split, cfg.seed, evals_per_epoch)
    log.info("Split: %s.", split.note)
    check_replay(cfg, data.objective.name, ctx.multimodal)
    if len(examples) < SMALL_DATASET and not circular and cfg.mode != "non-stop":
        log.info("Hint: %d examples is a small dataset; --circular trains it for many more passes and stops on "
                 "perfect loss.", len(examples))

    checkpoints = workdir / "checkpoints"
    checkpoint = find_checkpoint(cfg.resume, cfg.resume_from, checkpoints)
    start = start_adapter_for(cfg, checkpoint, workdir, model_path, info)
    placement = choose_placement(cfg.device if cfg.device != "auto" else info.get("defaults", {}).get("device",
                                                                                                       "auto"), handler)
    processes = resolve_processes(cfg.num_processes, placement.device)
    if placement.device == "cpu" and processes == 1:
        threads.apply_cpu_threads(model_config.get("hidden_size") or model_config.get("n_embd"))
    from accelerate import PartialState

    device = PartialState(cpu=placement.device == "cpu").device
    checkpointing = cfg.checkpointing(handler)
    max_length = choose_max_length(cfg.max_seq_length, handler.max_sequence_length, model_config)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)  # the LoRA initialisation is the same in every process and every run with this seed
    model = load_base_model(model_path, placement, handler, cfg.method, cfg.use_8bit,
                            info.get("trust_remote_code", False), device=device)
    reference = open_reference(ctx, model, tokenizer, checkpoint, device, processes)  # the base, before LoRA
    split, shares = mix_replay(split, shares, reference, cfg.replay, cfg.seed, max_length)
    for line in share_lines(shares) if is_mix(shares) else []:
        log.info("%s", line)
    row_length = min(max(len(t.input_ids) for t in tokenized + split.train), max_length)
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
    model = wrap_with_lora(model, targets, rank, alpha, cfg.lora_dropout, cfg.quantized,
                           checkpointing or (cfg.quantized and handler.gradient_checkpointing), exclude)
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
                data_fingerprint=data_fingerprint(sources, cfg.replay),
                chat_template=tokenizer.chat_template if data.fallback_used else None)
    ctx.plan, ctx.lora = plan, LoraShape(rank, alpha, targets)
    _log_plan(cfg, plan, batches, split, placement, checkpointing)
    rules = ctx.rules = rules_for(data.task, cfg.patience, cfg.overfitting_threshold, cfg.max_forgetting)
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
    ctx.general = start_watch(monitor, reference, trainer, start, resumed, "--force-epochs" if cfg.force_epochs else
                              "--mode non-stop" if cfg.mode == "non-stop" else None)
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
            chosen, which = trainer.best_dir, kept_description(monitor, kind)
        else:
            chosen, which = last, "last (no evaluation finished)"
        summary = adapter_info(ctx, monitor, trainer.state, reason, baseline, which, resumed, bool(split.val))
        summary.update(data.objective.summary(trainer, monitor, bool(split.val)))
        summary["config"] = saved_config(cfg, output, workdir)  # also lora/run.yaml: --config repeats the run
        summary["mix"] = [share.as_dict() for share in shares] if is_mix(shares) else None
        previous = publish_adapter(chosen, output, summary, {RUN_FILE: run_file_text(summary["config"])})
        _copy_logs(workdir, output)
        limit = monitor.general_zero * (1 + rules.max_forgetting) if monitor.stops_on_forgetting else None
        plot_history(trainer.state.history, workdir / "training_history.png", limit)
        log.info("Adapter: %s -> %s%s", which, output, f" (previous adapter kept in {previous})" if previous else "")
        samples = None
        if not cfg.skip_test and not interrupted:
            multimodal = ctx.multimodal
            samples = vision.sample_answers(model, model_path, chosen, examples, bool(split.val), device_name(
                device)) if multimodal else sample_answers(
                model, tokenizer, chosen, examples, bool(split.val), device_name(device))
            summary["evaluation"] = {"skipped": "image examples: the base/tuned comparison reads text data only"} \
                if multimodal else with_general(evaluate_run(model, tokenizer, chosen, *_evaluated(
                    examples, tokenized, split.val), device_name(device)), summary["forgetting"])
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
