"""Rendering train.sh, start.sh and the train_lora.py launcher from templates/.

Rendered values are never executed: every `{{ }}` in a template must end in one of the filters
below, each escaping for the place its value lands (shell word, shell comment, Python string
literal, Python docstring text), and rendering refuses a template that prints a value unescaped.
A missing variable is an error too.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from core import __version__
from core.model_dir import ModelDir
from core.quoting import escaped_char, rendered_text, shell_quote
from core.quoting import one_line as comment_text
from core.settings import INSTALLER_HOME

TEMPLATES_DIR = INSTALLER_HOME / "templates"
WRAPPERS = {"train.sh": "train.sh.j2", "start.sh": "start.sh.j2", "train_lora.py": "train_lora.py.j2"}


class _Escaped(str):
    """A value a filter has escaped for its place in a template."""


def python_literal(value) -> str:
    """`value` as a Python string literal (repr escapes quotes, backslashes and every non-printable character)."""
    return repr(rendered_text(value))


def docstring_text(value) -> str:
    """`value` for the inside of a Python \"\"\"docstring\"\"\": no quote or backslash left that could end or bend it."""
    return "".join("\\" + char if char in '\\"' else char if char.isprintable() else escaped_char(char)
                   for char in rendered_text(value))


FILTERS = {"sh": shell_quote, "py": python_literal, "docstring": docstring_text, "comment": comment_text}


def _require_escaped(value):
    if not isinstance(value, _Escaped):
        raise RuntimeError(f"A template prints {value!r} without escaping it; end the expression with one of the "
                           f"filters {', '.join(FILTERS)}.")
    return value


def _environment(loader=None):
    import jinja2

    env = jinja2.Environment(
        loader=loader or jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=_require_escaped,
    )
    for name, escape in FILTERS.items():
        env.filters[name] = lambda value, escape=escape: _Escaped(escape(value))
    return env


def template_variables(model_dir: ModelDir, info: dict) -> dict:
    """Everything a wrapper template may use."""
    return {
        "installer_version": __version__,
        "installer_home": str(INSTALLER_HOME),
        "python": os.environ.get("LLM_INSTALLER_PYTHON") or sys.executable,
        "model_dir": str(model_dir.root),
        "model_id": info["source"],
        "handler": info["handler"],
        "deps_dir": str(model_dir.deps),
        "has_deps": bool(info.get("extra_requirements")),
        "dtype": info["defaults"]["dtype"],
        "device": info["defaults"]["device"],
        "quantization": info["defaults"]["quantization"],
    }


def render_text(template_name: str, variables: dict, loader=None) -> str:
    """One template rendered with `variables`; RuntimeError when the template itself is wrong."""
    import jinja2

    try:
        return _environment(loader).get_template(template_name).render(**variables)
    except jinja2.UndefinedError as exc:
        raise RuntimeError(f"Template {template_name} uses an undefined variable: {exc.message}") from exc


def render_wrappers(model_dir: ModelDir, info: dict) -> list[Path]:
    """Write the executable wrappers into the model directory; returns their paths."""
    variables = template_variables(model_dir, info)
    written = []
    for output_name, template_name in WRAPPERS.items():
        text = render_text(template_name, variables)
        target = model_dir.root / output_name
        tmp = target.with_name(f".{output_name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(tmp, target)
        written.append(target)
    return written
