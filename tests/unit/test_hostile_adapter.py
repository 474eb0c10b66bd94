"""Hardening v2 (issue 21, item 9): a hostile adapter_config.json or adapter_info.json is one sentence
(AdapterError, which start.sh --lora, eval and export print as such), never a traceback."""

from __future__ import annotations

import json

import pytest

from core.adapter import AdapterError, inspect_adapter


def _adapter(tmp_path, config, info=None):
    path = tmp_path / "adapter"
    path.mkdir()
    (path / "adapter_model.safetensors").write_bytes(b"")
    (path / "adapter_config.json").write_text(json.dumps(config))
    if info is not None:
        (path / "adapter_info.json").write_text(json.dumps(info))
    return path


@pytest.mark.parametrize("config,words", [
    ({"r": "abc"}, "'r' must be a whole number, not 'abc'"),
    ({"r": []}, "'r' must be a whole number, not []"),
    ({"r": 8, "lora_alpha": {"x": 1}}, "'lora_alpha' must be a whole number"),
    ({"r": 8, "target_modules": 5}, "'target_modules' must be a list of module names"),
    (["not", "an", "object"], "must hold a JSON object"),
])
def test_hostile_adapter_configs_are_one_sentence(tmp_path, config, words):
    with pytest.raises(AdapterError, match=words.replace("[", "\\[").replace("]", "\\]")):
        inspect_adapter(_adapter(tmp_path, config), tmp_path / "model-dir", {"source": "m"})


def test_non_text_base_model_names_are_ignored_not_a_crash(tmp_path):
    path = _adapter(tmp_path, {"r": 8, "lora_alpha": 16.0, "base_model_name_or_path": 5},
                    {"base_model": ["x"], "finished_at": 3})
    found = inspect_adapter(path, tmp_path / "model-dir", {"source": "m"})
    assert (found.rank, found.alpha, found.base_model, found.trained_at) == (8, 16, "?", None)
