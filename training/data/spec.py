"""The --data spelling: comma-separated entries, each a file, directory, glob, save_to_disk folder or Hub
NAME:SPLIT, with an optional weight written `@N` at its end (`chat.json@3,'docs/*.jsonl@0.5'`).

`@` is part of no glob syntax, no Windows path and no Hub dataset name, so a trailing `@NUMBER` is always
a weight and never part of what it weights. Run files spell the same thing as a list of
`{path: ..., weight: ...}` entries; both become one canonical --data string here.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.quoting import brief
from training.errors import ConfigError

FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".txt", ".parquet")
WEIGHTED = re.compile(r"^(?P<spec>.+)@(?P<weight>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")
ENTRY_KEYS = ("path", "weight")


@dataclass(frozen=True)
class DataEntry:
    """One --data entry: what to read, and how many times it counts per epoch."""

    spec: str
    weight: float = 1.0


def check_weight(value, where: str) -> float:
    """A weight as a positive finite number; ConfigError naming `where` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}: the weight must be a number above 0, not {brief(value)}.")
    try:
        weight = float(value)
    except ValueError:
        raise ConfigError(f"{where}: the weight must be a number above 0, not {brief(value)}.") from None
    if not math.isfinite(weight) or weight <= 0:
        raise ConfigError(f"{where}: the weight must be a number above 0 (a fraction trains on that share of the "
                          f"source), not {value}.")
    return weight


def parse_data(value: str) -> list[DataEntry]:
    """The entries of a --data value, weights split off (ConfigError on a weight of 0 or below)."""
    entries = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        match = WEIGHTED.match(part)
        if match:
            spec = match["spec"].strip()
            entries.append(DataEntry(spec, check_weight(match["weight"], f"--data {part}")))
        else:
            entries.append(DataEntry(part))
    return entries


def _number(weight: float) -> str:
    return str(int(weight)) if float(weight).is_integer() else repr(float(weight))


def format_data(entries: list[DataEntry]) -> str:
    """The canonical --data string of these entries."""
    return ",".join(e.spec if e.weight == 1 else f"{e.spec}@{_number(e.weight)}" for e in entries)


def looks_like_hub_spec(part: str, base: Path | None = None) -> bool:
    """Whether `part` is a Hub NAME:SPLIT rather than a path (relative to `base`, else the working directory)."""
    name, sep, split = part.rpartition(":")
    exists = os.path.exists(os.path.join(base, part) if base is not None else part)
    return bool(sep and name and split and "*" not in part and not exists and not name.endswith(FILE_SUFFIXES))


def _rebase(spec: str, base: Path) -> str:
    if spec.startswith("~") or Path(spec).is_absolute() or looks_like_hub_spec(spec, base):
        return spec
    return str(base / spec)


def data_from_run_file(value, base: Path, where: str) -> str:
    """A run file's `data` (text, or a list of texts and {path, weight} entries) as a --data string, its
    relative paths taken from `base` (the run file's directory)."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(f"{where}: 'data' is an empty list; give at least one {{path: ..., weight: ...}} entry.")
    entries: list[DataEntry] = []
    for number, item in enumerate(items, start=1):
        label = f"{where}: data entry {number}" if isinstance(value, list) else f"{where}: data"
        if isinstance(item, dict):
            unknown = [key for key in item if key not in ENTRY_KEYS]
            if unknown:
                raise ConfigError(f"{label} has the unknown key {brief(unknown[0])}; an entry has 'path' and 'weight'.")
            if not isinstance(item.get("path"), str) or not item["path"].strip():
                raise ConfigError(f"{label} needs a 'path' (anything --data accepts).")
            parsed = parse_data(item["path"])
            if "weight" in item:
                if any(e.weight != 1 for e in parsed):
                    raise ConfigError(f"{label} gives a weight twice (with @ in its path and as 'weight'); keep one.")
                weight = check_weight(item["weight"], label)
                parsed = [DataEntry(e.spec, weight) for e in parsed]
        elif isinstance(item, str):
            parsed = parse_data(item)
        else:
            raise ConfigError(f"{label} must be a path or a {{path: ..., weight: ...}} entry, not {brief(item)}.")
        if not parsed:
            raise ConfigError(f"{label} names no data.")
        entries += [DataEntry(_rebase(e.spec, base), e.weight) for e in parsed]
    return format_data(entries)


def portable_path(spec: str, run_dir: Path, home: Path) -> str:
    """A path as a saved run file writes it: relative to the file's directory `run_dir` when it lies in the
    model directory `home` (which may move), else absolute; ~ paths as they are."""
    if spec.startswith("~"):
        return spec
    absolute = os.path.abspath(spec)
    inside = os.path.commonpath([absolute, os.path.abspath(home)]) == os.path.abspath(home)
    return os.path.relpath(absolute, run_dir) if inside else absolute


def data_for_run_file(value: str, run_dir: Path, home: Path) -> str | list[dict]:
    """A --data value as a saved run file writes it: a string, or a list of {path, weight} when weighted."""
    entries = [e if looks_like_hub_spec(e.spec) else DataEntry(portable_path(e.spec, run_dir, home), e.weight)
               for e in parse_data(value)]
    if all(e.weight == 1 for e in entries):
        return format_data(entries)
    return [{"path": e.spec, "weight": int(e.weight) if e.weight.is_integer() else e.weight} for e in entries]
