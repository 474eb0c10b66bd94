"""Hardening v2 (issue 21, item 10): `remove ALIAS` deletes the link, not the model; a data file replaced while
it is read records the sha256 of the version its examples came from; GGUF-install staging of killed runs is
removed by the next successful conversion; the export's disk-space refusal states its margin."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from export.pipeline import ExportError, _check_space
from training.data import sources


def test_remove_of_a_symlinked_alias_deletes_the_link_only(cli, tmp_path):
    models = tmp_path / "models"
    real = models / "real-model"
    real.mkdir(parents=True)
    (real / "model_info.json").write_text(json.dumps({"source": "x"}))
    (models / "alias").symlink_to(real)
    result = cli("remove", "alias", "-y")
    assert result.exit_code == 0, result.output
    assert not (models / "alias").is_symlink() and (real / "model_info.json").is_file()
    assert "is kept" in result.output


def test_a_data_file_replaced_while_read_records_one_version(tmp_path, monkeypatch):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"text": "old"}] * 2))
    replacement = json.dumps([{"text": "new"}] * 5)
    real_read = sources.read_json
    calls = []

    def read_then_replace(file: Path):
        records = real_read(file)
        if not calls:  # another program swaps the file right after the first read
            (tmp_path / "next.json").write_text(replacement)
            os.replace(tmp_path / "next.json", path)
        calls.append(file)
        return records

    monkeypatch.setattr(sources, "read_json", read_then_replace)
    read = sources.read_file(path)
    assert len(read.records) == 5 and read.sha256 == hashlib.sha256(replacement.encode()).hexdigest()


def test_a_successful_conversion_removes_killed_conversions_staging(tmp_path, monkeypatch):
    from sources import gguf

    weights = tmp_path / "m" / "model"
    weights.parent.mkdir()
    dead = weights.parent / ".convert-999999999-abc"
    older = weights.parent / ".convert-q1w2e3"  # an older version's name, without a process id
    for folder in (dead, older):
        folder.mkdir()
    monkeypatch.setattr(gguf, "convert_gguf", lambda _path, dest, echo: (dest / "config.json").write_text("{}"))
    gguf.convert_into(type("Info", (), {"path": tmp_path / "x.gguf"})(), weights, echo=lambda _m: None)
    assert sorted(p.name for p in weights.parent.iterdir()) == ["model"] and (weights / "config.json").is_file()


def test_the_export_space_refusal_states_its_margin(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: namedtuple("Usage", "total used free")(0, 0, 100 * 2**20))
    with pytest.raises(ExportError, match=r"about 50.0 MiB, 116.5 MiB with the margin kept free \(5% and 64.0 MiB\)"):
        _check_space(tmp_path, 50 * 2**20)
