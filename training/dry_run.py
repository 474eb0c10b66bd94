"""`./train.sh --data SPEC --dry-run [--json]`: what a run would train, shown before anything is trained."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

from training.autostop import rules_for
from training.config import TrainConfig
from training.context import RunContext, RunData
from training.data.mixing import replay_count, split_sources
from training.data.tokenize import shown
from training.forgetting.reference import MAX_NEW_TOKENS, load_prompts
from training.forgetting.setup import off_reason
from training.launch import resolve_processes
from training.modeling import choose_placement
from training.planning import choose_max_length, plan_batches
from training.preparation import prepare_data

DRY_RUN_SHOWN, DRY_RUN_JSON_EXAMPLES = 3, 20  # examples --dry-run prints as text, and in its JSON


def dry_run(cfg: TrainConfig, model_path: Path, output: Path, workdir: Path) -> int:
    """--dry-run: the data read, detected, converted, tokenized, split and planned as a run would, printed (as
    text, or one JSON object with --json) without loading the model's weights or writing anything."""
    if cfg.json:  # the log goes to stderr so that stdout is the JSON object alone
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)
    ctx = RunContext.open(cfg, model_path, output, workdir, time.monotonic())
    data = ctx.data = prepare_data(ctx)
    evals_per_epoch = 1 if cfg.circular else cfg.preset.evals_per_epoch
    split, _shares = split_sources(data.tokenized, data.examples, data.sources, cfg.validation_split, cfg.seed,
                                   evals_per_epoch)
    plan = _dry_run_plan(ctx, split)
    report = _dry_run_report(cfg, data, plan, split)
    report["general_reference"] = _dry_run_general(ctx, split, plan["processes"])
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
    checkpointing = cfg.checkpointing(handler)
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
            "validation_examples": len(split.val), "processes": processes}


def _dry_run_general(ctx: RunContext, split, processes: int) -> dict:
    """What the run would do with the general reference: watched or why not, the prompts, the forgetting rule
    and --replay's examples per epoch (their answers come from the base model when the run starts)."""
    cfg = ctx.cfg
    reason = off_reason(cfg, ctx.data.objective.name, ctx.multimodal, processes)
    if reason:
        return {"watched": False, "reason": reason}
    prompts = load_prompts()
    limit = rules_for(ctx.data.task, max_forgetting=cfg.max_forgetting).max_forgetting
    stops = limit > 0 and not cfg.force_epochs and cfg.mode != "non-stop"
    return {"watched": True, "prompts": len(prompts["watch"]), "max_new_tokens": MAX_NEW_TOKENS,
            "max_forgetting": limit, "stops": stops,
            "replay_per_epoch": replay_count(len(split.train), cfg.replay) if cfg.replay else 0}


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
    general = report.get("general_reference") or {}
    if general.get("watched"):
        rule = f"stop past +{general['max_forgetting']:.0%} (--max-forgetting)" if general["stops"] else \
            "measured, never stops"
        replay = f"; --replay: {general['replay_per_epoch']} general examples per epoch" if \
            general["replay_per_epoch"] else ""
        lines.append(f"General reference: the base model's own answers to {general['prompts']} general prompts (made "
                     f"at the run's start, cached in the model directory), watched at every evaluation; {rule}{replay}.")
    elif general:
        lines.append(f"General reference: off ({general['reason']}).")
    shown_examples = report["examples"][:DRY_RUN_SHOWN]
    for entry in shown_examples:
        label = f", {entry['label']}" if "label" in entry else ""
        lines += ["", f"--- {entry['source']} record {entry['record']} ({entry['format']}{label}); "
                      "trained parts between ⟦ and ⟧ ---", entry["text"]]
        if "rejected" in entry:
            lines += ["--- rejected answer ---", entry["rejected"]["text"]]
    return "\n".join(lines)


