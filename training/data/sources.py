"""Reading --data: files, directories, globs, comma lists, Hub datasets and save_to_disk folders,
into records (dicts) tagged with where they came from and the entry (and weight) that named them."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from training.data.files import DataError, open_regular, read_delimited, read_json, read_json_lines, read_text, sha256
from training.data.formats import FORMATS
from training.data.spec import FILE_SUFFIXES, looks_like_hub_spec, parse_data

__all__ = ["FILE_SUFFIXES", "DataError", "SourceRecords", "load_sources", "read_file"]


@dataclass
class SourceRecords:
    """The records of one source, with the format its folder name forces (if any)."""

    origin: str
    records: list[dict]
    forced_format: str | None = None
    sha256: str | None = None
    text_lines: bool = False
    entry: str = ""  # the --data entry that named it (validation is drawn per entry)
    weight: float = 1.0  # times the entry counts per epoch


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open_regular(path) as handle:
        try:
            return pq.read_table(handle).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read Parquet: {exc}.") from exc


def read_file(path: Path, forced_format: str | None = None) -> SourceRecords:
    """Records of one data file."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        records = read_text(path)
    elif suffix == ".json":
        records = read_json(path)
    elif suffix == ".jsonl":
        records = read_json_lines(path)
    elif suffix in (".csv", ".tsv"):
        records = read_delimited(path, "," if suffix == ".csv" else "\t")
    elif suffix == ".parquet":
        records = _read_parquet(path)
    else:
        raise DataError(f"{path}: unsupported file type '{suffix}' (supported: {', '.join(FILE_SUFFIXES)}).")
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {number} is a {type(record).__name__}, expected an object.")
    return SourceRecords(str(path), records, forced_format, sha256(path), text_lines=suffix == ".txt")


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def _read_saved_dataset(path: Path) -> SourceRecords:
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except (OSError, ValueError, KeyError) as exc:  # a damaged folder: missing arrow files, bad state JSON
        raise DataError(f"{path}: cannot read this saved dataset (datasets.save_to_disk folder): "
                        f"{_root_cause(exc)}") from exc
    if isinstance(dataset, DatasetDict):
        split = "train" if "train" in dataset else next(iter(dataset))
        dataset = dataset[split]
    return SourceRecords(str(path), dataset.to_list())


def _read_once(path: Path, forced_format: str | None, seen: set[str]) -> list[SourceRecords]:
    """The file's records, or nothing when this --data value already read it (a glob through a symlink loop
    matches one file many times)."""
    key = os.path.realpath(path)
    if key in seen:
        return []
    seen.add(key)
    return [read_file(path, forced_format)]


def _directory_files(directory: Path, forced_format: str | None, seen: set[str],
                     ancestors: dict[tuple[int, int], Path] | None = None) -> list[SourceRecords]:
    status = directory.stat()
    identity = (status.st_dev, status.st_ino)
    ancestors = ancestors or {}
    if identity in ancestors:
        raise DataError(f"{directory} leads back to {ancestors[identity]} (a directory symlink loop); remove the "
                        "link or point --data below it.")
    if _is_saved_dataset(directory):
        return [_read_saved_dataset(directory)]
    inner = {**ancestors, identity: directory}
    found = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            sub_format = entry.name.lower() if entry.name.lower() in FORMATS else forced_format
            found += _directory_files(entry, sub_format, seen, inner)
        elif entry.suffix.lower() in FILE_SUFFIXES:  # FIFOs, devices and sockets named *.json are refused there
            found += _read_once(entry, forced_format, seen)
    return found


def _root_cause(exc: BaseException) -> str:
    # datasets wraps the real problem ("column x missing", "no such split") in generic errors.
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__
    message = " ".join(str(exc).split())
    return (message[:300] + " ...") if len(message) > 300 else message or type(exc).__name__


def _hub_dataset(spec: str) -> SourceRecords:
    from datasets import load_dataset

    name, _, split = spec.rpartition(":")
    try:
        dataset = load_dataset(name, split=split or "train")
    except Exception as exc:
        raise DataError(f"Cannot load Hugging Face dataset '{name}' split '{split}': {_root_cause(exc)}") from exc
    return SourceRecords(f"hf:{spec}", dataset.to_list())


def _entry_sources(part: str) -> list[SourceRecords]:
    """Every source named by one --data entry (its weight already split off)."""
    path = Path(part).expanduser()
    if any(ch in part for ch in "*?["):
        matches = sorted(glob.glob(str(path), recursive=True))
        if not matches:
            raise DataError(f"No files match '{part}'.")
        seen: set[str] = set()
        sources: list[SourceRecords] = []
        for match in matches:
            match_path = Path(match)
            if match_path.is_dir():
                sources += _directory_files(match_path, None, seen)
            elif match_path.suffix.lower() in FILE_SUFFIXES:
                sources += _read_once(match_path, None, seen)
        return sources
    if path.is_dir():
        found = _directory_files(path, None, set())
        if not found:
            raise DataError(f"{path} holds no data files ({', '.join(FILE_SUFFIXES)}).")
        return found
    if path.exists() or path.is_symlink():  # a FIFO, a device or a dangling link is refused by name there
        return [read_file(path)]
    if looks_like_hub_spec(part):
        return [_hub_dataset(part)]
    raise DataError(f"Data not found: '{part}' is not a file, directory, glob or NAME:SPLIT.")


def load_sources(spec: str) -> list[SourceRecords]:
    """Every source named by a --data value, tagged with its entry and weight.

    A file named by two entries is refused: its held-out examples could be trained on through the other one.
    """
    sources: list[SourceRecords] = []
    named_by: dict[str, str] = {}
    for entry in parse_data(spec):
        for source in _entry_sources(entry.spec):
            key = source.origin if source.origin.startswith("hf:") else os.path.realpath(source.origin)
            if key in named_by:
                raise DataError(f"{source.origin} is named twice in --data (by '{named_by[key]}' and '{entry.spec}'); "
                                "name each file once and give it a weight (@N) instead.")
            named_by[key] = entry.spec
            source.entry, source.weight = entry.spec, entry.weight
            sources.append(source)
    return sources
