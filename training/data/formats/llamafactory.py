"""LLaMA-Factory's dataset catalogue (`dataset_info.json`): each entry names a file and declares its formatting
(`alpaca` or `sharegpt`), its column mapping (`columns`), ShareGPT's role tags (`tags`) and whether it holds
preference pairs (`ranking`) or KTO labels (`columns.kto_tag`). Its records are rewritten here into the keys this
trainer's formats detect, so a LLaMA-Factory data folder trains as its catalogue declares it.

Not a record format of its own (a catalogue says how to read other files), so it has no REGISTRY line: the run
reads a catalogue (training/preparation.py `load_examples`) and hands the rewritten records to the registry's formats.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from training.data.files import DataError

CATALOGUE = "dataset_info.json"
# --data DIR, DIR/dataset_info.json, or either followed by :NAME[,NAME...] to pick entries
SPEC = re.compile(r"^(?P<path>.+?)(?::(?P<names>[\w.\-]+(?:,[\w.\-]+)*))?$")
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
CANONICAL = {"user_tag": "human", "assistant_tag": "gpt", "observation_tag": "observation",
             "function_tag": "function_call", "system_tag": "system"}


@dataclass
class CatalogueEntry:
    """One dataset of a catalogue: its name, its file, and how its records are laid out."""

    name: str
    path: Path
    formatting: str = "alpaca"
    ranking: bool = False
    columns: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)


def _is_catalogue(path: Path) -> bool:
    """Whether `path` is a LLaMA-Factory catalogue (not a `datasets.save_to_disk` dataset_info.json, which
    describes features rather than naming files)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and bool(data) and all(
        isinstance(v, dict) and bool({"file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url",
                                      "cloud_file_name"} & set(v)) for v in data.values())


def catalogue_spec(spec: str) -> tuple[Path, list[str] | None] | None:
    """(catalogue file, picked entry names or None for all) when --data names a LLaMA-Factory catalogue."""
    match = SPEC.match(spec.strip())
    for candidate, names in ((spec.strip(), None), (match.group("path"), match.group("names")) if match else (None,
                                                                                                      None)):
        if candidate is None:
            continue
        path = Path(candidate).expanduser()
        path = path / CATALOGUE if path.is_dir() else path
        if path.name == CATALOGUE and path.is_file() and _is_catalogue(path):
            return path, names.split(",") if names else None
    return None


def catalogue_entries(path: Path, names: list[str] | None) -> list[CatalogueEntry]:
    """The catalogue's entries: the named ones in that order, or every entry with a local file. A named entry
    on a hub is a DataError: training reads a catalogue's local files (the Hub by NAME:SPLIT, without
    LLaMA-Factory's column mappings), and may be offline."""
    data = json.loads(path.read_text(encoding="utf-8"))
    unknown = [n for n in names or [] if n not in data]
    if unknown:
        raise DataError(f"{path}: no dataset named {', '.join(unknown)} (it has: {', '.join(data)}).")
    entries = []
    for name in names or [n for n in data if "file_name" in data[n]]:  # the whole folder: its local files
        entry = data[name]
        if "file_name" not in entry:
            where = entry.get("hf_hub_url") or entry.get("ms_hub_url") or entry.get("script_url") or "a hub"
            raise DataError(f"{path}: dataset '{name}' is on {where}, not a local file; download it into "
                            f"{path.parent} and name its file in 'file_name', or pick local entries with "
                            f"--data {path}:NAME,NAME.")
        entries.append(CatalogueEntry(name, path.parent / entry["file_name"], entry.get("formatting", "alpaca"),
                                      bool(entry.get("ranking")), entry.get("columns") or {}, entry.get("tags") or {}))
    return entries


def _turn(turn, tags: dict, where: str) -> dict:
    """One ShareGPT turn under the entry's tags as {"from": canonical speaker, "value": text}."""
    if not isinstance(turn, dict):
        raise DataError(f"{where}: every turn must be an object.")
    role = turn.get(tags["role_tag"])
    speakers = {tags[key]: canonical for key, canonical in CANONICAL.items()}
    if role not in speakers:
        raise DataError(f"{where}: turn speaker '{role}' is not one of the entry's tags ({', '.join(speakers)}).")
    return {"from": speakers[role], "value": turn.get(tags["content_tag"])}


def _sharegpt(record: dict, entry: CatalogueEntry, where: str) -> dict:
    tags = {**SHAREGPT_TAGS, **entry.tags}
    column = entry.columns.get("messages", "conversations")
    turns = record.get(column)
    if not isinstance(turns, list):
        raise DataError(f"{where}: column '{column}' must be a list of turns.")
    out = {"conversations": [_turn(t, tags, where) for t in turns]}
    for key in ("system", "tools", "images"):
        if record.get(entry.columns.get(key, key)) is not None:
            out[key] = record[entry.columns.get(key, key)]
    if entry.ranking:
        out["chosen"] = _turn(record.get(entry.columns.get("chosen", "chosen")), tags, where)
        out["rejected"] = _turn(record.get(entry.columns.get("rejected", "rejected")), tags, where)
    return out


def _alpaca(record: dict, entry: CatalogueEntry, where: str) -> dict:
    columns = {"prompt": "instruction", "query": "input", "response": "output", **entry.columns}
    if "response" not in entry.columns and columns["response"] not in record and not entry.ranking:
        return {"text": record.get(columns["prompt"])}  # pre-training data: the prompt column is the text
    turns = []
    for old_query, old_answer in record.get(columns.get("history", "history")) or []:
        turns += [{"from": "human", "value": old_query}, {"from": "gpt", "value": old_answer}]
    query = record.get(columns["query"])
    prompt = record.get(columns["prompt"]) or ""
    turns.append({"from": "human", "value": f"{prompt}\n{query}" if query else prompt})
    out: dict = {"conversations": turns}
    if record.get(columns.get("system", "system")):
        out["system"] = record[columns.get("system", "system")]
    if entry.ranking:
        out["chosen"] = {"from": "gpt", "value": record.get(columns.get("chosen", "chosen"))}
        out["rejected"] = {"from": "gpt", "value": record.get(columns.get("rejected", "rejected"))}
    else:
        turns.append({"from": "gpt", "value": record.get(columns["response"])})
    return out


def rewrite(record: dict, entry: CatalogueEntry, where: str) -> dict:
    """A record of `entry` in the keys the format registry detects (ShareGPT conversations, preference pairs,
    KTO labels, or text)."""
    out = _sharegpt(record, entry, where) if entry.formatting == "sharegpt" else _alpaca(record, entry, where)
    kto = entry.columns.get("kto_tag")
    if kto is not None:
        out["label"] = record.get(kto)
    return out
