"""The evaluation for people: base | tuned | change per metric (`llm-installer eval` and train.sh's report), and
the trade between the user's data and the general reference in one line."""

from __future__ import annotations

import math
import shlex

# (key, label, format) of the table's rows; exact match is shown in percent.
ROWS = (("loss", "loss", "{:.4f}"), ("perplexity", "perplexity", "{:.2f}"), ("exact_match", "exact match", "{:.1%}"),
        ("rouge_l", "ROUGE-L", "{:.3f}"), ("bleu", "BLEU", "{:.1f}"), ("answers_per_second", "answers/s", "{:.2f}"))


def _change(key: str, fmt: str, base: float, tuned: float) -> str:
    if key == "exact_match":
        return f"{100 * (tuned - base):+.1f} pts"
    return "+" + fmt.format(tuned - base) if tuned >= base else fmt.format(tuned - base)


def trade_line(domain: tuple[float, float] | None, general: tuple[float, float] | None,
               domain_measure: str = "perplexity") -> str:
    """The trade in one line: "domain: perplexity 13.9 → 1.4; general: perplexity 1.98 → 2.02 (loss +3%)".
    `domain` is (before, after) in `domain_measure`; `general` the general reference's loss (base, tuned)."""
    parts = []
    if domain is not None:
        parts.append(f"domain: {domain_measure} {domain[0]:.3g} → {domain[1]:.3g}")
    if general is not None:
        base, tuned = general
        parts.append(f"general: perplexity {math.exp(min(base, 50)):.3g} → {math.exp(min(tuned, 50)):.3g} (loss "
                     f"{(tuned - base) / max(base, 1e-9):+.0%})")
    return "; ".join(parts)


def domain_and_general(result: dict) -> str | None:
    """The trade line of an evaluation with a general comparison (None without one)."""
    general = result.get("general")
    if not general or "tuned" not in general:
        return None
    domain = (result["base"]["perplexity"], result["tuned"]["perplexity"]) if "base" in result and \
        "tuned" in result else None
    return trade_line(domain, (general["base"]["loss"], general["tuned"]["loss"]))


def _general_rows(general: dict) -> list[str]:
    """The general reference's rows under the table: loss and perplexity, base | tuned | change."""
    lines = []
    for key, label, fmt in (("loss", "general loss", "{:.4f}"), ("perplexity", "general ppl", "{:.2f}")):
        base, tuned = general["base"][key], general["tuned"][key]
        lines.append(f"{label:<13}{fmt.format(base):>12}{fmt.format(tuned):>12}{_change(key, fmt, base, tuned):>14}")
    return lines


def format_table(result: dict) -> str:
    """The comparison for people: one row per metric, base | tuned | change, then the setup and notes."""
    sides = [side for side in ("base", "tuned") if side in result]
    both = len(sides) == 2
    lines = [f"{'':<13}" + "".join(f"{side:>12}" for side in sides) + (f"{'change':>14}" if both else "")]
    for key, label, fmt in ROWS:
        values = [result[side].get(key) for side in sides]
        if all(value is None for value in values):
            continue
        cells = "".join(f"{fmt.format(v) if v is not None else '-':>12}" for v in values)
        change = f"{_change(key, fmt, *values):>14}" if both and None not in values else ""
        lines.append(f"{label:<13}{cells}{change}")
    general = result.get("general")
    if both and general and "tuned" in general:
        lines += _general_rows(general)
    setup = result.get("setup", {})
    if setup:
        lines.append(f"{setup['examples']} examples, {setup['answered']} answered greedily (up to "
                     f"{setup['max_new_tokens']} new tokens, batches of {setup['batch_size']}, {setup['device']}); "
                     "loss and perplexity on answer tokens, lower is better.")
    if setup.get("note"):
        lines.append(f"Note: {setup['note']}.")
    trade = domain_and_general(result)
    if trade:
        lines.append(f"General: the base model's own greedy answers to {general['prompts']} general prompts "
                     f"({general['answer_tokens']} tokens), what tuning costs outside your data: {trade}.")
    return "\n".join(lines)


def format_run_evaluation(evaluation: dict, model_dir) -> list[str]:
    """The report's lines for train.sh's evaluation (or why it was skipped)."""
    command = f"llm-installer eval {shlex.quote(str(model_dir or '.'))} --data HELD_OUT_DATA"
    if "skipped" in evaluation:
        return [f"Evaluation:       skipped ({evaluation['skipped']}); run {command}"]
    setup = evaluation["setup"]
    return [f"Evaluation on {setup['examples']} of the {setup['validation_examples']} validation examples "
            f"(for more: {command}):"] + format_table(evaluation).splitlines()
