"""Reading one data file safely: regular files only, streamed, every error naming the file and line.

JSON Lines, CSV, TSV and text files are read a line at a time; a .json file (an array, an object
wrapping one array, or JSON Lines saved as .json) is decoded a chunk at a time, one record after
another. Nothing is read whole except one record (or one line), capped at MAX_RECORD_BYTES, so a
file that never ends (a symlink to /dev/zero, a FIFO) or a runaway record is one clear error.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from core.errors import UserError

MAX_RECORD_BYTES = 256 * 2**20  # the largest single record, line or JSON value held in memory at once
CHUNK_BYTES = 2**20
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
_EXTRA_FIELDS = object()  # DictReader's key for the values of a row longer than the header


CONVERSATION_KEYS = ("conversations", "messages")  # the keys of a chat example (ShareGPT, OpenAI)


class DataError(UserError, ValueError):
    """Bad data: the message names the file and record."""


def _too_big(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what} is larger than {MAX_RECORD_BYTES // 2**20} MiB, the most one record may take; "
                     "split it into smaller records (JSON Lines reads one record per line).")


def _cannot_open(path: Path, exc: OSError) -> DataError:
    dangling = " (a symlink to a missing file)" if os.path.islink(path) and not os.path.exists(path) else ""
    return DataError(f"{path}: cannot open it: {exc.strerror}{dangling}.")


def _require_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        target = f" (a symlink to {os.path.realpath(path)})" if os.path.islink(path) else ""
        raise DataError(f"{path}{target} is {kind}, not a regular file; --data reads regular files only.")


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for binary reading; DataError unless it is a regular file (or a symlink to one)."""
    try:
        _require_regular(path, os.stat(path).st_mode)
        # O_NONBLOCK: should a FIFO replace the file meanwhile, opening it must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise _cannot_open(path, exc) from exc
    try:
        _require_regular(path, os.fstat(fd).st_mode)  # what was opened, not what was looked at
    except DataError:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def sha256(path: Path) -> str:
    """The file's SHA-256, read in chunks."""
    return sha256_and_identity(path)[0]


def identity(path: Path) -> tuple[int, ...]:
    """What tells one version of a file from another: device, inode, size and modification time (empty for a
    path that cannot be looked at: reading it then says why)."""
    try:
        return _identity(os.stat(path))
    except OSError:
        return ()


def _identity(status: os.stat_result) -> tuple[int, ...]:
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


def sha256_and_identity(path: Path) -> tuple[str, tuple[int, ...]]:
    """The file's SHA-256 and the identity of the very file that was hashed (see `identity`)."""
    with open_regular(path) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest(), _identity(os.fstat(handle.fileno()))


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded line with its ending), one line in memory at a time."""
    with open_regular(path) as handle:
        number = 0
        while raw := handle.readline(MAX_RECORD_BYTES + 1):
            number += 1
            if len(raw) > MAX_RECORD_BYTES:
                raise _too_big(path, f"line {number}")
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: not UTF-8 text (bad byte at line {number}); re-save the file as UTF-8.") \
                    from exc


def read_text(path: Path) -> list[dict]:
    """A .txt file: one {"text": line} record per non-blank line."""
    return [{"text": part} for _, line in text_lines(path) for part in line.splitlines() if part.strip()]


def read_json_lines(path: Path) -> list:
    """A .jsonl file: one JSON value per non-blank line."""
    records = []
    for number, line in text_lines(path):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: malformed JSON on line {number}: {exc.msg}.") from exc
    return records


def read_delimited(path: Path, delimiter: str) -> list[dict]:
    """A CSV or TSV file with a header row: one record per row (quoted fields may span lines)."""
    csv.field_size_limit(MAX_RECORD_BYTES)  # the module's 128 KiB default would refuse long documents
    reader = csv.DictReader((line for _, line in text_lines(path)), delimiter=delimiter, restkey=_EXTRA_FIELDS)
    kind = "CSV" if delimiter == "," else "TSV"
    records: list[dict] = []
    first_line = 1
    try:
        if not reader.fieldnames:
            return []
        while True:
            first_line = reader.reader.line_num + 1  # a quoted field may take the record over several lines
            row = next(reader, None)
            if row is None:
                return records
            if _EXTRA_FIELDS in row:
                raise DataError(f"{path}: record {len(records) + 1} (from line {first_line}) has more fields than "
                                f"the {len(reader.fieldnames)} of the header row.")
            records.append(row)
    except csv.Error as exc:
        raise DataError(f"{path}: malformed {kind} in record {len(records) + 1} (from line {first_line}): {exc}.") \
            from exc


def _is_one_conversation(data) -> bool:
    """A JSON object that is itself one chat example ({"conversations": [turns]} or {"messages": [turns]}), not a
    wrapper around a list of examples."""
    if not isinstance(data, dict):
        return False
    turns = next((data[key] for key in CONVERSATION_KEYS if isinstance(data.get(key), list)), None)
    return bool(turns) and isinstance(turns[0], dict) and bool({"from", "role"} & turns[0].keys())


def read_json(path: Path) -> list:
    """A .json file: an array of records, an object wrapping exactly one array, or JSON Lines saved as .json."""
    with open_regular(path) as handle:
        reader = _JsonReader(handle, path)
        first = reader.peek()
        if first == "":
            raise DataError(f"{path}: the file is empty; expected a JSON array of examples.")
        if first == "[":
            data = reader.array()
        elif first == "{":
            data = reader.wrapper()
            if reader.peek():  # more values follow: JSON Lines saved as .json
                return [data, *reader.rest_as_lines()]
        else:
            data = reader.value()
        if reader.peek():
            raise reader.malformed(reader.pos, "Extra data")
    if _is_one_conversation(data):
        return [data]  # axolotl's conversation.json: the object is one example, its system/tools kept with it
    if isinstance(data, dict):
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: a JSON object must wrap exactly one list of examples.")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of examples.")
    return data


class _JsonReader:
    """JSON values of a file decoded a chunk at a time, with line and column for errors."""

    def __init__(self, handle: BinaryIO, path: Path):
        self.handle, self.path = handle, path
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.json = json.JSONDecoder()
        self.buf, self.pos, self.eof = "", 0, False
        self.line, self.column = 1, 1  # of buf[0]
        self.lines_mode = False  # JSON Lines wording in errors

    def _read(self, size: int) -> None:
        data = self.handle.read(size)
        pending = len(self.decoder.getstate()[0])
        try:
            text = self.decoder.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            bad = self.line + self.buf.count("\n") + data[: max(0, exc.start - pending)].count(b"\n")
            raise DataError(f"{self.path}: not UTF-8 text (bad byte at line {bad}); re-save the file as UTF-8.") \
                from exc
        self.eof = not data
        consumed = self.buf[: self.pos]  # drop what is parsed, keeping line and column right
        newlines = consumed.count("\n")
        self.line += newlines
        self.column = len(consumed) - consumed.rfind("\n") if newlines else self.column + len(consumed)
        self.buf, self.pos = self.buf[self.pos:] + text, 0

    def where(self, offset: int) -> tuple[int, int]:
        """(line, column) of buf[offset]."""
        newlines = self.buf.count("\n", 0, offset)
        column = offset - self.buf.rfind("\n", 0, offset) if newlines else self.column + offset
        return self.line + newlines, column

    def malformed(self, offset: int, message: str) -> DataError:
        line, column = self.where(offset)
        message = re.sub(r"( starting)? at$", "", message)  # json's messages expect a position after them
        if self.lines_mode:
            return DataError(f"{self.path}: malformed JSON on line {line}: {message}.")
        return DataError(f"{self.path}: malformed JSON at line {line}, column {column}: {message}.")

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file), which stays unread."""
        while True:
            if self.pos < len(self.buf) and self.buf[self.pos] not in " \t\n\r":  # the common case, without a regex
                return self.buf[self.pos]
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos: self.pos + 1]
            self._read(CHUNK_BYTES)

    def expect(self, char: str, what: str) -> None:
        if self.peek() != char:
            raise self.malformed(self.pos, f"Expecting {what}")
        self.pos += 1

    def _scan(self) -> tuple:
        try:
            return self.json.scan_once(self.buf, self.pos)  # raw_decode without its wrapper: one call per record
        except StopIteration as stop:
            raise json.JSONDecodeError("Expecting value", self.buf, stop.value) from None

    def value(self):
        """The next JSON value, read in growing chunks until it is complete."""
        self.peek()
        while True:
            try:
                value, end = self._scan()
                # a number or literal that ends the text read so far may go on in the next chunk
                if end < len(self.buf) or self.eof or isinstance(value, dict | list | str):
                    self.pos = end
                    return value
            except json.JSONDecodeError as exc:
                # an error well before the end of the text read so far is real (an unterminated string is not)
                if self.eof or (exc.pos < len(self.buf) - 16 and not exc.msg.startswith("Unterminated string")):
                    raise self.malformed(exc.pos, exc.msg) from exc
            if len(self.buf) - self.pos > MAX_RECORD_BYTES:
                raise _too_big(self.path, "the JSON value at line {}, column {}".format(*self.where(self.pos)))
            self._read(max(CHUNK_BYTES, len(self.buf) - self.pos))  # doubling keeps re-parsing linear

    def array(self) -> list:
        """A JSON array, one element in memory as text at a time."""
        self.expect("[", "'['")
        items: list = []
        if self.peek() == "]":
            self.pos += 1
            return items
        while True:
            items.append(self.value())
            if self.peek() == "]":
                self.pos += 1
                return items
            self.expect(",", "',' delimiter")

    def wrapper(self) -> dict:
        """A JSON object whose array values are read like `array` (the list of examples it may wrap)."""
        self.expect("{", "'{'")
        result: dict = {}
        if self.peek() == "}":
            self.pos += 1
            return result
        while True:
            if self.peek() != '"':
                raise self.malformed(self.pos, "Expecting property name enclosed in double quotes")
            key = self.value()
            self.expect(":", "':' delimiter")
            result[key] = self.array() if self.peek() == "[" else self.value()
            if self.peek() == "}":
                self.pos += 1
                return result
            self.expect(",", "',' delimiter")

    def rest_as_lines(self) -> Iterator:
        """The values after the first one, for JSON Lines saved as .json."""
        self.lines_mode = True
        while self.peek():
            yield self.value()
