"""llama.cpp's official converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py): located, pinned,
fetched once, cached, run, and their failures told in one sentence.

The converters are not on PyPI as a package of their own; the `llama-cpp-python` source distribution
vendors llama.cpp with them and with its `gguf-py`. We fetch that sdist once with pip, extract only the
converter files into ~/.cache/llm-installer/llama.cpp/<version>/, and run the scripts as subprocesses with
this environment's Python. A user's own llama.cpp checkout (--llama-cpp DIR or $LLM_INSTALLER_LLAMA_CPP)
takes precedence, for architectures newer than the pinned release.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError
from core.settings import CACHE_ENV, cache_dir  # noqa: F401  (CACHE_ENV: re-exported for callers and tests)

# The pinned release: its vendored llama.cpp converts every architecture this version knows.
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CHECKOUT_ENV = "LLM_INSTALLER_LLAMA_CPP"
HF_CONVERTER = "convert_hf_to_gguf.py"
LORA_CONVERTER = "convert_lora_to_gguf.py"
# What the converters import from their own tree (the rest of the 76 MB sdist is C++ we never build).
NEEDED = (HF_CONVERTER, LORA_CONVERTER, "conversion/", "gguf-py/gguf/", "LICENSE")
COMPLETE_MARKER = ".complete"
TAIL_LINES = 60


class ConverterError(UserError, RuntimeError):
    """llama.cpp's converter is unavailable or refused the model; the message says why in one sentence."""


@dataclass(frozen=True)
class Converter:
    """A directory holding llama.cpp's converter scripts, and where it came from (for messages)."""

    root: Path
    origin: str

    def script(self, name: str) -> Path:
        return self.root / name


def cache_root() -> Path:
    """The installer's cache (settings.cache_dir: $LLM_INSTALLER_CACHE, $XDG_CACHE_HOME or ~/.cache)."""
    return cache_dir()


def _checkout(path: Path) -> Converter:
    root = path.expanduser().resolve()
    missing = [name for name in (HF_CONVERTER, LORA_CONVERTER, "gguf-py") if not (root / name).exists()]
    if missing:
        raise ConverterError(f"{root} is not a llama.cpp checkout: {', '.join(missing)} missing there.")
    return Converter(root, f"llama.cpp checkout {root}")


def locate(checkout: Path | None = None, echo: Callable[[str], None] = print) -> Converter:
    """The converter to use: `checkout`, else $LLM_INSTALLER_LLAMA_CPP, else the cached pinned release
    (fetched on first use)."""
    if checkout is not None:
        return _checkout(Path(checkout))
    if os.environ.get(CHECKOUT_ENV):
        return _checkout(Path(os.environ[CHECKOUT_ENV]))
    target = cache_root() / "llama.cpp" / LLAMA_CPP_PYTHON_VERSION
    if not (target / COMPLETE_MARKER).is_file():
        fetch(target, echo)
    return Converter(target, f"llama.cpp from llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}")


def _pip_download(dest: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
               "-d", str(dest), f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    archives = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if result.returncode != 0 or not archives:
        reason = _last_error_line(result.stdout) or f"pip exited with status {result.returncode}"
        raise ConverterError(f"Cannot fetch llama.cpp's converter (llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} source "
                             f"from PyPI): {reason}; connect to the internet once, or point --llama-cpp or "
                             f"${CHECKOUT_ENV} at a llama.cpp checkout.")
    return archives[0]


def _extract(archive: Path, dest: Path) -> None:
    """Only the converter files of the vendored llama.cpp, never a path outside `dest`."""
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if len(parts) < 4 or parts[1:3] != ["vendor", "llama.cpp"]:
                continue
            relative = "/".join(parts[3:])
            if not any(relative == n or (n.endswith("/") and relative.startswith(n)) for n in NEEDED):
                continue
            if not (member.isfile() or member.isdir()) or ".." in parts:
                continue
            member.name = relative
            tar.extract(member, dest, filter="data")


def fetch(target: Path, echo: Callable[[str], None] = print) -> None:
    """Download the pinned sdist with pip and cache its converter files in `target` (atomically)."""
    echo(f"Fetching llama.cpp's converter once (llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} source from PyPI, "
         f"about 75 MB) into {target} ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        archive = _pip_download(staging / "sdist")
        tree = staging / "tree"
        _extract(archive, tree)
        if not (tree / HF_CONVERTER).is_file() or not (tree / "gguf-py" / "gguf").is_dir():
            raise ConverterError(f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}'s source has no {HF_CONVERTER}; "
                                 f"point --llama-cpp at a llama.cpp checkout instead.")
        (tree / COMPLETE_MARKER).write_text(archive.name + "\n", encoding="utf-8")
        if target.exists():  # an incomplete earlier attempt, or a concurrent fetch that just finished
            if (target / COMPLETE_MARKER).is_file():
                return
            shutil.rmtree(target)
        os.replace(tree, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _last_error_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^(\w+\.)*\w*(Error|Exception)\b", line) or line.startswith(("ERROR", "error:")):
            return line
    return lines[-1] if lines else ""


def explain_failure(output: str, returncode: int, converter: Converter, script: str) -> str:
    """One sentence saying why a converter run failed, from its output."""
    where = converter.origin
    if re.search(r"BPE pre-tokenizer was not recognized", output):
        return (f"llama.cpp ({where}) does not recognise this model's tokenizer (its BPE pre-tokenizer hash is not in "
                f"{HF_CONVERTER}), so it cannot be converted to GGUF; a newer llama.cpp checkout (--llama-cpp DIR) "
                f"may know it.")
    match = re.search(r"(?:Model|Architecture) '?\"?([\w.-]+)'?\"? (?:is )?not supported", output)
    if match:
        return (f"llama.cpp ({where}) cannot convert the {match.group(1)} architecture to GGUF; a newer llama.cpp "
                f"checkout (--llama-cpp DIR) may support it.")
    match = re.search(r"No module named '([\w.]+)'", output)
    if match:
        module = match.group(1).split(".")[0]
        return (f"llama.cpp's {script} needs the Python package '{module}', which is not installed: run "
                f"{Path(sys.executable).parent / 'pip'} install {module}, then export again.")
    if "No space left on device" in output:
        return f"The disk filled up while {script} was writing the GGUF file; free some space and export again."
    if returncode in (-9, 137) or "MemoryError" in output:
        return f"llama.cpp's {script} ran out of memory; close other programs or export on a machine with more RAM."
    return f"llama.cpp's {script} ({where}) failed: {_last_error_line(output) or f'exit status {returncode}'}."


def run(converter: Converter, script: str, args: list[str], log_path: Path) -> None:
    """Run one converter script with this Python and the converter's own gguf-py first on the path;
    its whole output goes to `log_path`; a failure is a ConverterError naming that log."""
    env = dict(os.environ)
    # The scripts import `conversion` from their directory and the gguf-py they were written with, never
    # an installed `gguf` of another version.
    env["PYTHONPATH"] = os.pathsep.join([str(converter.root / "gguf-py"), str(converter.root)]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("NO_LOCAL_GGUF", None)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the converter must read the local directory, never the Hub
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        result = subprocess.run([sys.executable, str(converter.script(script)), *args], stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=str(converter.root))
    if result.returncode != 0:
        output = log_path.read_text(encoding="utf-8", errors="replace")
        reason = explain_failure(output, result.returncode, converter, script).rstrip(".")
        raise ConverterError(f"{reason} (full output in {log_path}).")
