"""The evaluation for people: base | tuned | change per metric (`llm-installer eval` and train.sh's report)."""

from __future__ import annotations

import shlex

# (key, label, format) of the table's rows; exact match is shown in percent.
ROWS = (("loss", "loss", "{:.4f}"), ("perplexity", "perplexity", "{:.2f}"), ("exact_match", "exact match", "{:.1%}"),
        ("rouge_l", "ROUGE-L", "{:.3f}"), ("bleu", "BLEU", "{:.1f}"), ("answers_per_second", "answers/s", "{:.2f}"))


def _change(key: str, fmt: str, base: float, tuned: float) -> str:
    if key == "exact_match":
        return f"{100 * (tuned - base):+.1f} pts"
    return "+" + fmt.format(tuned - base) if tuned >= base else fmt.format(tuned - base)


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
    setup = result.get("setup", {})
    if setup:
        lines.append(f"{setup['examples']} examples, {setup['answered']} answered greedily (up to "
                     f"{setup['max_new_tokens']} new tokens, batches of {setup['batch_size']}, {setup['device']}); "
                     "loss and perplexity on answer tokens, lower is better.")
    if setup.get("note"):
        lines.append(f"Note: {setup['note']}.")
    return "\n".join(lines)


def format_run_evaluation(evaluation: dict, model_dir) -> list[str]:
    """The report's lines for train.sh's evaluation (or why it was skipped)."""
    command = f"llm-installer eval {shlex.quote(str(model_dir or '.'))} --data HELD_OUT_DATA"
    if "skipped" in evaluation:
        return [f"Evaluation:       skipped ({evaluation['skipped']}); run {command}"]
    setup = evaluation["setup"]
    return [f"Evaluation on {setup['examples']} of the {setup['validation_examples']} validation examples "
            f"(for more: {command}):"] + format_table(evaluation).splitlines()
