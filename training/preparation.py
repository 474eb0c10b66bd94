"""A run's data before any weights are loaded: every source read (LLaMA-Factory catalogues as declared),
each record detected and converted, the objective chosen and the examples tokenized for it. Shared by the
training run (training/run.py) and --dry-run (training/dry_run.py)."""

from __future__ import annotations

import logging
import random
import re

from handlers.chat_templates import ensure_chat_template
from training import vision
from training.config import TrainConfig
from training.context import RunContext, RunData
from training.data.formats import Example, read_examples, refuse_images, task_type
from training.data.formats.llamafactory import catalogue_entries, catalogue_spec, rewrite
from training.data.sources import DataError, load_sources, read_file
from training.data.tokenize import CUT_OFF, cut_off_sentence
from training.modeling import load_tokenizer
from training.objectives.registry import objective_for
from training.planning import choose_max_length

log = logging.getLogger("train")


def load_examples(cfg: TrainConfig):
    """(sources, examples, per-source reads) from every source, capped by --max-examples; DataError on empty data.
    A record with no answer is skipped and counted (refused with --strict-data)."""
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


def prepare_data(ctx: RunContext) -> RunData:
    """The run's data: read, detected, converted and tokenized for the objective the data and flags choose;
    what was skipped or truncated is logged."""
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
        raise DataError(f"No example is left to train on: {skip_note(objective.skipped, max_length)}.")
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
        log.warning("Skipped %s.", skip_note(objective.skipped, max_length))
    _warn_placeholders(examples)
    return RunData(sources, examples, tokenizer, tokenized, objective, fallback_used, task, formats, truncated)


def skip_note(skipped: list, max_length: int) -> str:
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
    pattern = re.compile(r"\{\{\s*\w+\s*\}\}")
    hits = [e for e in examples if any(pattern.search(str(m.get("content") or "")) for m in e.messages
                                       if m["role"] == "assistant") or pattern.search(e.completion or "")]
    if hits:
        names = sorted({m for e in hits for msg in e.messages for m in pattern.findall(str(msg.get("content") or ""))}
                       | {m for e in hits for m in pattern.findall(e.completion or "")})
        log.warning("%d example(s) contain unreplaced placeholders in their answers (%s, first: %s record %d); "
                    "they are trained as written: replace them in the data first.", len(hits), ", ".join(names[:5]),
                    hits[0].origin, hits[0].index + 1)


