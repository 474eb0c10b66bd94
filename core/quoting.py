"""Values from users or files, written where they could change meaning: shell words, one-line comments, and
the short form of an untrusted value in a one-sentence error.

`installer/render.py` renders the wrappers with the same rules; export writes Modelfiles, READMEs and printed
commands with these, from a floor that cannot import the installer.
"""

from __future__ import annotations

import os
import reprlib
import shlex

# os.fsdecode maps the bytes of a path that are not UTF-8 to these lone surrogates (surrogateescape).
_UNDECODABLE_BYTES = range(0xDC80, 0xDD00)
BRIEF_CHARS = 80


def rendered_text(value) -> str:
    """`value` (text or a path) as text; ValueError for a NUL, which no quoting can carry."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if "\0" in text:
        # No path, id or setting can hold NUL, and no quoting can carry it into a shell word.
        raise ValueError(f"A rendered value contains a NUL character: {brief(text)}")
    return text


def escaped_char(char: str) -> str:
    """Python's backslash escape of one non-printable character (valid in Python literals, readable in comments)."""
    return ascii(char)[1:-1]


def _bash_char(char: str) -> str:
    if char in "\\'":
        return "\\" + char
    if char.isprintable():
        return char
    if ord(char) in _UNDECODABLE_BYTES:
        return f"\\x{ord(char) - 0xDC00:02x}"  # the original byte, so the shell sees the real path
    return "".join(f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))


def shell_quote(value) -> str:
    """`value` as one shell word on one line: shlex quoting, or bash's $'...' when it holds control
    characters (a newline, a tab) or bytes that are not UTF-8. Also for paths printed as commands to type."""
    text = rendered_text(value)
    if text.isprintable():
        return shlex.quote(text)
    return "$'" + "".join(_bash_char(char) for char in text) + "'"


def one_line(value) -> str:
    """`value` on one line: every control or line-separator character (newline, carriage return, U+2028,
    escape codes) written as its Python escape, so it can add no line to the file it lands in."""
    return "".join(char if char.isprintable() else escaped_char(char) for char in rendered_text(value))


def brief(value, limit: int = BRIEF_CHARS) -> str:
    """A short, one-line repr of an untrusted value for an error message, in bounded work.

    Never formats a container whole: a YAML document of nested aliases is tiny as a graph but its repr is
    billions of characters. reprlib shows the first items of the first levels; text is cut to `limit`."""
    if isinstance(value, int) and value.bit_length() > 256:  # str() of a huge int is slow, then refused
        return f"a {value.bit_length():,}-bit number"
    shortened = reprlib.Repr()
    shortened.maxlevel, shortened.maxlist, shortened.maxdict, shortened.maxtuple, shortened.maxset = 2, 6, 6, 6, 6
    shortened.maxstring = shortened.maxother = shortened.maxlong = limit
    text = one_line(shortened.repr(value))
    return text if len(text) <= 2 * limit else text[: 2 * limit] + "..."
