"""Reading --data: files, directories, globs, comma lists, Hub datasets and save_to_disk folders,
into records (dicts) tagged with where they came from and the entry (and weight) that named them."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from training.data.files import (
    DataError,
    identity,
    open_regular,
    read_delimited,
    read_json,
    read_json_lines,
    read_text,
    sha256_and_identity,
)
from training.data.formats import FORMATS
from training.data.spec import FILE_SUFFIXES, looks_like_hub_spec, parse_data

__all__ = ["FILE_SUFFIXES", "DataError", "SourceRecords", "load_sources", "read_file"]

log = logging.getLogger("train")
# Directory entries one --data glob may look at: far more than any dataset folder holds, few enough that a
# walk through a huge or looping tree stops in seconds with a sentence instead of running for hours.
MAX_GLOB_ENTRIES = 200_000
READ_ATTEMPTS = 3  # a file replaced while it is read is read again, this many times at most
WILDCARDS = "*?["


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
    """Records of one data file, with the SHA-256 of the very version they were read from: a file replaced or
    rewritten while it is read (its inode, size or time changed) is read again."""
    for _ in range(READ_ATTEMPTS):
        before = identity(path)
        records = _records(path)
        digest, after = sha256_and_identity(path)
        if before == after:
            return SourceRecords(str(path), records, forced_format, digest, text_lines=path.suffix.lower() == ".txt")
    raise DataError(f"{path} changed every time it was read ({READ_ATTEMPTS} times); train once it is completely "
                    "written.")


def _records(path: Path) -> list[dict]:
    """The records of one data file, by its suffix; DataError for a record that is not an object."""
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
    return records


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


def _component_regex(part: str) -> str:
    """One path component of a glob as a regex, with glob's rules: `*` and `?` stay inside the component, a
    `[...]` class may be negated with `!`, and a wildcard never matches a leading dot."""
    out = [] if part.startswith(".") else ["(?!\\.)"]
    index = 0
    while index < len(part):
        char = part[index]
        end = part.find("]", index + 2) if char == "[" else -1
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif end != -1:
            inner = part[index + 1:end].replace("\\", "\\\\")
            out.append("[" + ("^" + inner[1:] if inner.startswith("!") else inner) + "]")
            index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


def _split_glob(pattern: str) -> tuple[str, list[str]]:
    """The literal directory a glob starts from ('' for the working directory) and its components from the
    first one holding a wildcard."""
    parts = Path(pattern).parts
    first = next(index for index, part in enumerate(parts) if any(ch in part for ch in WILDCARDS))
    return (str(Path(*parts[:first])) if first else ""), list(parts[first:])


def _glob_regex(parts: list[str]) -> re.Pattern:
    """Matches a path relative to the glob's start, written with a trailing '/'; `**` is any number of
    directories (none included), like glob's recursive mode."""
    return re.compile("".join("(?:(?!\\.)[^/]+/)*" if part == "**" else _component_regex(part) + "/"
                              for part in parts))


def walk_glob(pattern: str) -> tuple[list[Path], list[str]]:
    """The paths a recursive glob matches, each real directory entered once, and the directories that were
    reached again through a symlink and skipped.

    glob.glob follows directory symlinks on every path: `up -> ..` and `up2 -> ../..` make a `**` glob's work
    grow without bound. Here a directory is identified by device and inode, so a loop ends at its second
    visit, and the whole walk looks at no more than MAX_GLOB_ENTRIES entries (a DataError past that)."""
    base, parts = _split_glob(pattern)
    regex, deep, dotted = _glob_regex(parts), "**" in parts, any(part.startswith(".") for part in parts)
    matches: list[Path] = []
    skipped: list[str] = []
    visited: set[tuple[int, int]] = set()
    looked = 0
    pending = [(base or ".", "", 0)]
    while pending:
        directory, relative, depth = pending.pop()
        try:
            status = os.stat(directory)
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError:  # unreadable or vanished: glob ignores it as well
            continue
        if (status.st_dev, status.st_ino) in visited:
            skipped.append(os.path.join(base, relative))
            continue
        visited.add((status.st_dev, status.st_ino))
        looked += len(entries)
        if looked > MAX_GLOB_ENTRIES:
            raise DataError(f"'{pattern}' walks more than {MAX_GLOB_ENTRIES:,} files and folders; point it at "
                            "the data's own folder.")
        children = []
        for entry in entries:
            inside = relative + entry.name
            if regex.fullmatch(inside + "/"):
                matches.append(Path(os.path.join(base, inside)))
            hidden = entry.name.startswith(".") and not dotted
            if (deep or depth + 1 < len(parts)) and not hidden and _is_dir(entry):
                children.append((entry.path, inside + "/", depth + 1))
        pending.extend(reversed(children))
    return sorted(matches), skipped


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _glob_sources(part: str, path: Path) -> list[SourceRecords]:
    """Every source a glob entry matches, each file read once; says which looping directories it skipped."""
    matches, skipped = walk_glob(str(path))
    if skipped:
        log.warning("%s: skipped %d folder(s) already read through another path (symlink loops), such as %s.",
                    part, len(skipped), ", ".join(skipped[:3]))
    if not matches:
        raise DataError(f"No files match '{part}'.")
    seen: set[str] = set()
    sources: list[SourceRecords] = []
    for match_path in matches:
        if match_path.is_dir():
            sources += _directory_files(match_path, None, seen)
        elif match_path.suffix.lower() in FILE_SUFFIXES:
            sources += _read_once(match_path, None, seen)
    return sources


def _entry_sources(part: str) -> list[SourceRecords]:
    """Every source named by one --data entry (its weight already split off)."""
    path = Path(part).expanduser()
    if any(ch in part for ch in WILDCARDS):
        return _glob_sources(part, path)
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
