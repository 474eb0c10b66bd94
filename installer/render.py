"""Rendering train.sh, start.sh and the train_lora.py launcher from templates/.

Every value lands in the script through the `sh` filter (shell-quoted) and a missing
variable is an error, so a path with spaces, quotes or `$` is safe.
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path

from . import __version__
from .model_dir import ModelDir
from .settings import INSTALLER_HOME

TEMPLATES_DIR = INSTALLER_HOME / "templates"
WRAPPERS = {"train.sh": "train.sh.j2", "start.sh": "start.sh.j2", "train_lora.py": "train_lora.py.j2"}


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["sh"] = lambda value: shlex.quote(str(value))
    env.filters["py"] = lambda value: repr(str(value))
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


def render_wrappers(model_dir: ModelDir, info: dict) -> list[Path]:
    """Write the executable wrappers into the model directory; returns their paths."""
    import jinja2

    env = _environment()
    variables = template_variables(model_dir, info)
    written = []
    for output_name, template_name in WRAPPERS.items():
        try:
            text = env.get_template(template_name).render(**variables)
        except jinja2.UndefinedError as exc:
            raise RuntimeError(f"Template {template_name} uses an undefined variable: {exc.message}") from exc
        target = model_dir.root / output_name
        tmp = target.with_name(f".{output_name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(tmp, target)
        written.append(target)
    return written
