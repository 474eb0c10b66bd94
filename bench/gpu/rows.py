"""The GPU check's parts and the table rows made of their records (bench/gpu_check.py runs them)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gpu import model as shapes
from gpu.report import Row, ratio

WARMUP = 3
LABEL = {"llama3-8b": "Llama-3-8B shape", "smollm2-135m": "SmolLM2-135M shape"}
LORA_RANK = 16


@dataclass(frozen=True)
class Part:
    key: str
    group: str  # what --parts selects; "setup" parts run when a selected part needs them
    kind: str  # env | data | model | engine | trainer | serve
    shape: str | None
    contender: str
    timeout: float  # the most it may run, in seconds
    minimum: float  # not started with less than this left
    cap: float = 0.0  # training: seconds of timed steps
    overhead: float = 0.0  # training: start, loading and saving around the timed steps
    needs: tuple[str, ...] = ()
    wheels: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()  # engine flags beyond the common ones


def training_metrics(record: dict, shape: dict, peak: float | None) -> dict:
    """tokens/s, MFU, peak memory and step counts from a probe's record (steps after the warm-up ones, timed from
    the end of the last warm-up step to the end of the last step); {"error": ...} when too few steps ran."""
    steps, warmup = record.get("steps") or [], max(1, int(record.get("warmup", WARMUP)))
    result: dict = {"steps": len(steps)}
    if record.get("peak_allocated"):
        result["peak_gib"] = record["peak_allocated"] / 1024**3
    if len(steps) <= warmup:
        result["error"] = f"{len(steps)} step(s) ran, not more than the {warmup} warm-up step(s)"
        return result
    timed = steps[warmup:]
    seconds = timed[-1]["end"] - steps[warmup - 1]["end"]
    tokens = sum(sum(s["lengths"]) for s in timed)
    n_lora = record.get("trainable") or shapes.lora_parameters(shape, LORA_RANK)
    flops = sum(shapes.step_flops(s["lengths"], shape, n_lora) for s in timed)
    result.update(timed=len(timed), seconds=seconds, tokens=tokens, flops=flops,
                  tokens_per_second=tokens / seconds if seconds > 0 else None, mfu=shapes.mfu(flops, seconds, peak))
    padded = sum(s.get("padded", 0) for s in timed)
    if padded:
        result["padding"] = padded / max(1, tokens)
    return result


def failure_reason(log_text: str) -> str:
    """The line of a part's output that says why it failed (the last error-looking one, else the last)."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"Error|Exception|error:|out of memory|Killed|Traceback", line) and line != "Traceback (most " \
                "recent call last):":
            return line[:240]
    return lines[-1][:240] if lines else "no output"


def count(value: float) -> str:
    """1.2B, 41.9M, 32.8k."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def training_row(part: Part, record: dict | None, outcome: str, peak: float | None, shape: dict | None = None) -> Row:
    """The row of a training contender from its probe's record (`shape`: the config values, default the part's)."""
    row = Row(part.key, LABEL[part.shape], part.contender, outcome)
    if not record:
        return row
    metrics = training_metrics(record, shape or shapes.SHAPES[part.shape], peak)
    row.tokens_per_second, row.mfu, row.peak_gib = metrics.get("tokens_per_second"), metrics.get("mfu"), \
        metrics.get("peak_gib")
    row.steps = f"{metrics['timed']} of {metrics['steps']}" if "timed" in metrics else None
    if outcome == "ok" and "error" in metrics:
        row.result = f"failed: {metrics['error']}"
    if record.get("precision"):
        forced = record.get("precision_forced")
        row.notes.append(f"{record['precision']}" + (f" (forced; the handler picks {record.get('handler_precision')})"
                                                    if forced else ""))
    if record.get("gradient_checkpointing"):
        row.notes.append("gradient checkpointing on")
    if record.get("quantization"):
        row.notes.append(f"base {record['quantization']}")
    if record.get("trainable"):
        row.notes.append(f"{count(record['trainable'])} trainable")
    if "padding" in metrics:
        row.notes.append(f"padded tokens x{metrics['padding']:.2f}")
    if "seconds" in metrics:
        row.notes.append(f"{metrics['tokens']:,} tokens in {metrics['seconds']:.1f} s")
    if record.get("peak_reserved"):
        row.notes.append(f"reserved {record['peak_reserved'] / 1024**3:.1f} GiB")
    for module, status in (record.get("imports") or {}).items():
        if not status.startswith("ok"):
            row.notes.append(f"{module}: {status}")
    if "liger" in part.wheels and row.result == "ok" and not record.get("liger"):
        row.result = "failed: Liger's fused loss was not in use (the engine fell back to its chunked loss)"
    if "bnb" in part.wheels and row.result == "ok" and record.get("quantization") != "4bit":
        row.result = "failed: the base model was not loaded in 4 bits"
    return row


def serve_rows(part: Part, record: dict | None, outcome: str) -> list[Row]:
    label = LABEL[part.shape]
    one = Row(part.key, label, "1 client, " + part.contender, outcome)
    many = Row(part.key, label, f"{(record or {}).get('clients', 8)} concurrent clients, same server", outcome)
    if record:
        for row, key in ((one, "single"), (many, "many")):
            measured = record.get(key) or {}
            row.tokens_per_second = measured.get("tokens_per_second")
            if measured:
                row.notes.append(f"{measured['requests']} requests x {record['tokens']} tokens in "
                                 f"{measured['seconds']:.1f} s")
                if measured.get("error_count"):
                    row.notes.append(f"{measured['error_count']} failed")
        if record.get("speedup"):
            many.notes.insert(0, f"x{record['speedup']:.2f} of 1 client")
        if record.get("ready_seconds") is not None:
            one.notes.append(f"server ready in {record['ready_seconds']} s")
    return [one, many]


def setup_row(part: Part, record: dict | None, outcome: str) -> Row:
    row = Row(part.key, LABEL.get(part.shape, "–"), part.contender, outcome)
    if not record:
        return row
    if part.kind == "env" and record.get("peak"):
        row.notes.append(f"{record['gpu']}: bf16 peak {record['peak']['flops_per_second'] / 1e12:.0f} TFLOP/s")
    if part.kind == "data" and record.get("tokens"):
        t = record["tokens"]
        row.notes.append(f"{t['examples']} examples of {t['min']}-{t['max']} tokens (median {t['median']}, "
                         f"{t['total']:,} in all)")
    if part.kind == "model" and record.get("bytes"):
        row.notes.append(f"{count(record['parameters'])} parameters, {record['bytes'] / 1024**3:.2f} GiB written in "
                         f"{record['seconds']} s")
    return row


def comparisons(rows: list[Row]) -> None:
    """Ratios between contenders of the same model, added to the notes of the first of each pair."""
    by_key = {row.part: row for row in rows}
    pairs = (("engine_smol", "trainer_smol", "Trainer"), ("engine_8b", "trainer_8b", "Trainer"),
             ("liger_8b", "engine_8b", "engine without Liger"), ("qlora_8b", "engine_8b", "engine LoRA"))
    for key, other, name in pairs:
        a, b = by_key.get(key), by_key.get(other)
        if not a or not b or a.result != "ok" or b.result != "ok":
            continue
        speed, memory = ratio(a.tokens_per_second, b.tokens_per_second), ratio(a.peak_gib, b.peak_gib)
        said = ", ".join(x for x in (f"tokens/s {speed}" if speed else "", f"memory {memory}" if memory else "") if x)
        if said:
            a.notes.insert(0, f"{said} of {name}")


# --- running ----------------------------------------------------------------------------------------------------
