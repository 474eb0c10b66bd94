"""./train.sh --dry-run: the data read, detected, converted, tokenized and planned as a run would, shown with
the trained parts marked, and nothing trained or written; on the toy model and on the real SmolLM2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

PEERS = Path(__file__).resolve().parent.parent / "fixtures" / "peer_formats"
GLAIVE = str(PEERS / "glaive_toolcall_en_demo.json")


def _dry_run(model_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(model_dir / "train.sh"), "--dry-run", *args], capture_output=True, text=True,
                          timeout=300)


def _nothing_written(model_dir: Path) -> bool:
    return not (model_dir / "lora").exists() and not (model_dir / "checkpoints").exists()


def test_dry_run_json_shows_sources_method_and_the_trained_spans(model_dir):
    result = _dry_run(model_dir, "--data", GLAIVE, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout is the JSON object alone; the log went to stderr
    assert report["method"] == "sft" and "Skipped 1 record(s)" in result.stderr
    [source] = report["sources"]
    assert {k: source[k] for k in ("format", "records", "examples", "skipped")} == {
        "format": "sharegpt", "records": 3, "examples": 2, "skipped": 1}
    assert source["skipped_records"] == [{"record": 2, "reason": "the assistant's answer is empty"}]
    first = report["examples"][0]
    assert first["format"] == "sharegpt" and len(first["trained"]) == 3
    assert first["trained"][1].startswith('<tool_call>\n{"name": "search_recipes"')
    assert not any("Stir Fry\"}" in span for span in first["trained"])  # the observation is context
    assert "⟦" in first["text"] and '{"recipes":' in first["text"]
    assert _nothing_written(model_dir)


def test_dry_run_text_names_each_source_and_marks_what_is_trained(model_dir):
    result = _dry_run(model_dir, "--data", f"{PEERS / 'dataset_info.json'}:kto_en_demo", "--epochs", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Source " in out and "kto_en_demo.json: format kto, 4 records -> 4 examples" in out
    assert "Method: kto;" in out and "up to 1 epoch(s)" in out
    assert "(kto, undesirable)" in out and "⟦Go away." in out
    assert _nothing_written(model_dir)


def test_strict_data_refuses_what_a_dry_run_would_skip(model_dir):
    result = _dry_run(model_dir, "--data", GLAIVE, "--strict-data")
    assert result.returncode == 1
    assert "glaive_toolcall_en_demo.json, record 2: the assistant's answer is empty. (--strict-data)" in result.stderr


@pytest.mark.real_model
def test_dry_run_on_smollm2_trains_the_assistants_tool_call_as_the_server_parses_it(tmp_path):
    from export_helpers import install_local
    from real_model import smollm2_model_dir

    from serving.tools import parse_tool_calls

    root = install_local(smollm2_model_dir(), tmp_path / "models", "smollm2")
    result = _dry_run(root, "--data", GLAIVE, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    third = report["examples"][1]  # record 3: a call, its result, the answer
    assert third["record"] == 3 and "You are a helpful AI assistant named SmolLM" in third["text"]
    call, answer = third["trained"]
    _text, calls = parse_tool_calls(call, {"search_recipes"})
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("search_recipes", {"ingredients": ["eggs"]})]
    assert answer.startswith("You could make an omelette.") and "Omelette" not in call + answer
    assert _nothing_written(root)
    # a limit that leaves the first record's answers no room: skipped and counted, the limit named
    short = _dry_run(root, "--data", GLAIVE, "--max-seq-length", "40", "--json")
    assert short.returncode == 0, short.stderr
    assert "whose answer was cut off entirely by the sequence length limit (40 tokens" in short.stderr
