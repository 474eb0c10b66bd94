"""The GPU check's one markdown table: a row per part, in the order the parts ran, with what each measured or
why it did not (a failed or skipped part says so in its own row; nothing is left out silently)."""

from __future__ import annotations

from dataclasses import dataclass, field

COLUMNS = ("part", "model", "contender", "result", "tokens/s", "peak GPU GiB", "MFU", "steps timed", "notes")


@dataclass
class Row:
    part: str
    model: str
    contender: str
    result: str = "not run"
    tokens_per_second: float | None = None
    peak_gib: float | None = None
    mfu: float | None = None
    steps: str | None = None
    notes: list[str] = field(default_factory=list)


def cell(value) -> str:
    """A table cell: one line, pipes escaped."""
    text = "" if value is None else str(value)
    return " ".join(text.split()).replace("|", "\\|")


def rate(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def gib(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def ratio(a: float | None, b: float | None) -> str | None:
    """'x1.83' for a / b, None when either is missing."""
    if a is None or b is None or b == 0:
        return None
    return f"x{a / b:.2f}"


def render_row(row: Row) -> str:
    values = (row.part, row.model, row.contender, row.result, rate(row.tokens_per_second), gib(row.peak_gib),
              percent(row.mfu), row.steps or "–", "; ".join(n for n in row.notes if n))
    return "| " + " | ".join(cell(v) for v in values) + " |"


def render(rows: list[Row], header: list[str] | None = None, footer: list[str] | None = None) -> str:
    """The markdown: header lines, the table, footer lines."""
    lines = [*(header or []), ""] if header else []
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join("---" if i < 4 else "---:" for i in range(len(COLUMNS) - 1)) + "|---|")
    lines += [render_row(row) for row in rows]
    if footer:
        lines += ["", *footer]
    return "\n".join(lines) + "\n"
