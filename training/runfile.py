"""Run files: `./train.sh --config run.yaml` (YAML or JSON).

Keys are the long flag names (`learning-rate` or `learning_rate`); values are converted and checked like
the flags' (through the same argparse actions); relative paths are taken from the file's directory; only
flags actually given on the command line override the file. Every run saves its configuration in the same
form (lora/run.yaml, and `config` in adapter_info.json), so `./train.sh --config lora/run.yaml` repeats it.
"""

from __future__ import annotations

import argparse
import difflib
import json
from dataclasses import fields
from pathlib import Path

from core.quoting import brief
from training.data.spec import data_for_run_file, data_from_run_file, parse_data, portable_path
from training.errors import ConfigError

RUN_FILE = "run.yaml"
# Fields a saved run file leaves out: the run file itself, where train.sh runs (it passes --model-dir), and
# what only makes sense once (resuming a checkpoint, serving old logs).
NOT_SAVED = ("config", "model_dir", "resume", "resume_from", "tensorboard_only")
KINDS = {int: "a whole number", float: "a number", Path: "a path", str: "text"}
_UNSET = object()
# Bounds on a run file, checked before any value is used: a real one is a few hundred bytes of flat keys. YAML
# aliases make a tiny document a huge tree ("billion laughs"), so the tree is counted as if expanded.
MAX_RUN_FILE_BYTES = 1024 * 1024
MAX_RUN_FILE_VALUES = 100_000
MAX_RUN_FILE_DEPTH = 32


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.dest != "help"}


def command_line_values(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict:
    """The flags actually given on the command line, by field name (argparse's defaults left out)."""
    namespace = argparse.Namespace(**dict.fromkeys(_actions(parser), _UNSET))
    parser.parse_args(argv, namespace)  # argparse only fills defaults for names the namespace lacks
    return {name: value for name, value in vars(namespace).items() if value is not _UNSET}


def merged_values(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict:
    """The field values of a run: the --config file's, overridden by the flags given; --data's weights checked."""
    given = command_line_values(parser, argv)
    values = read_run_file(Path(given["config"]), parser) if given.get("config") else {}
    values.update(given)
    if values.get("data"):
        parse_data(values["data"])  # a bad @weight is a flag error, before anything is touched
    return values


def _read_text(path: Path) -> str:
    """The run file's text, refused past MAX_RUN_FILE_BYTES without reading more than that."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_RUN_FILE_BYTES + 1)
        if len(data) > MAX_RUN_FILE_BYTES:
            raise ConfigError(f"{path} is larger than {MAX_RUN_FILE_BYTES // 1024} KiB, which no run file needs; "
                              "is it the right file?")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"Cannot read the run file {path}: {reason}.") from None


def _parse(path: Path, text: str):
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}.") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot parse it"
        raise ConfigError(f"{path} is not valid YAML: {problem}{where}.") from None


def _check_bounds(path: Path, document) -> None:
    """ConfigError when the document, with every YAML alias expanded, holds more than MAX_RUN_FILE_VALUES
    values or nests deeper than MAX_RUN_FILE_DEPTH; stops counting at the bound, so its work is bounded too."""
    pending, count = [(document, 0)], 0
    while pending:
        value, depth = pending.pop()
        count += 1
        if count > MAX_RUN_FILE_VALUES:
            raise ConfigError(f"{path} expands to more than {MAX_RUN_FILE_VALUES:,} values (YAML aliases repeat "
                              "what they name); a run file is a flat list of flags.")
        if depth > MAX_RUN_FILE_DEPTH:
            raise ConfigError(f"{path} nests more than {MAX_RUN_FILE_DEPTH} levels deep; a run file is a flat "
                              "list of flags.")
        children = [*value.keys(), *value.values()] if isinstance(value, dict) else \
            value if isinstance(value, list) else ()
        for child in children:
            pending.append((child, depth + 1))


def _load(path: Path):
    """The run file's document, bounded in size, alias expansion and depth before anything uses it."""
    text = _read_text(path)
    try:
        document = _parse(path, text)
    except RecursionError:  # brackets nested thousands deep: the parsers recurse once per level
        raise ConfigError(f"{path} nests more than {MAX_RUN_FILE_DEPTH} levels deep; a run file is a flat "
                          "list of flags.") from None
    _check_bounds(path, document)
    return document


def _field_name(key, known: list[str], path: Path) -> str:
    name = key.strip().replace("-", "_") if isinstance(key, str) else ""
    if name == "config":
        raise ConfigError(f"{path}: 'config' cannot be set in a run file (give one run file with --config).")
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0].replace('_', '-')}'?" if close else \
            "the keys are the long names of ./train.sh --help's flags."
        raise ConfigError(f"{path}: unknown key {brief(key)}; {hint}")
    return name


def read_run_file(path: Path, parser: argparse.ArgumentParser) -> dict:
    """A run file's values by field name, converted like their flags, relative paths from the file's
    directory; null means the flag's default. ConfigError (one sentence) on any bad key or value."""
    raw = _load(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must map flag names to values (like 'learning-rate: 2e-4'), not hold a "
                          f"{type(raw).__name__}.")
    actions = _actions(parser)
    known = [name for name in actions if name != "config"]
    base = path.expanduser().resolve().parent
    values, seen = {}, set()
    for key, value in raw.items():
        name = _field_name(key, known, path)
        if name in seen:
            raise ConfigError(f"{path}: '{name.replace('_', '-')}' is given twice (as '-' and '_' spellings).")
        seen.add(name)
        if value is not None:
            values[name] = _convert(name, value, actions[name], base, path)
    return values


def _convert(name: str, value, action: argparse.Action, base: Path, path: Path):
    key = name.replace("_", "-")
    if name == "data":
        return data_from_run_file(value, base, str(path))
    if action.nargs == 0:  # a store_true flag
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: '{key}' must be true or false, not {brief(value)}.")
        return value
    if action.nargs == "?" and value is True:  # a flag whose value is optional, given without one
        return action.const
    kind = KINDS.get(action.type, "a value")
    if isinstance(value, bool | list | dict):
        raise ConfigError(f"{path}: '{key}' must be {kind}, not {brief(value)}.")
    try:
        converted = action.type(str(value)) if action.type else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{path}: '{key}' must be {kind}, not {brief(value)}.") from None
    if action.choices is not None and converted not in action.choices:
        raise ConfigError(f"{path}: '{key}' must be one of {', '.join(map(str, action.choices))}, not {brief(value)}.")
    if isinstance(converted, Path):
        converted = converted.expanduser()
        converted = converted if converted.is_absolute() else base / converted
    return converted


def saved_config(cfg, run_dir: Path, home: Path) -> dict:
    """The run's configuration as its saved run file holds it: every field but NOT_SAVED, by flag name, paths
    inside the model directory `home` relative to `run_dir` (where the file is written), others absolute."""
    values = {}
    for spec in fields(cfg):
        if spec.name in NOT_SAVED:
            continue
        value = getattr(cfg, spec.name)
        if spec.name == "data" and value:
            value = data_for_run_file(value, run_dir, home)
        elif isinstance(value, Path):
            value = portable_path(str(value), run_dir, home)
        values[spec.name.replace("_", "-")] = value
    return values


def run_file_text(values: dict) -> str:
    """YAML of a saved configuration, with a header saying how to repeat the run."""
    import yaml

    header = ("# The configuration of this training run: ./train.sh --config <this file> repeats it (flags given with\n"
              "# it override its values). Relative paths are taken from this file's directory.\n")
    return header + yaml.safe_dump(values, sort_keys=False, allow_unicode=True, default_flow_style=False)
