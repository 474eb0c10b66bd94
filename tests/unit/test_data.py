"""--data sources, file types and dataset formats: detection, conversion and clean errors (the answer-only
labels on the installed built-in model's tokenizer are in tests/e2e/test_data_e2e.py)."""

import csv
import json

import pytest

from training.data.formats import examples_from_source, task_type
from training.data.sources import DataError, load_sources

RECORDS = {
    "alpaca": {"instruction": "Translate to French", "input": "cat", "output": "chat"},
    "sharegpt": {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                                   {"from": "gpt", "value": "Hello!"}]},
    "openai": {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
                            {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
                            {"role": "assistant", "content": "6"}]},
    "qa": {"question": "Capital of Italy?", "answer": "Rome", "context": "Italy is in Europe."},
    "completion": {"prompt": "Once upon a time", "completion": " there was a model."},
    "text": {"text": "Plain text to continue."},
}

TOOL_CALL = {"messages": [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
    {"role": "assistant", "content": "It is 21 degrees in Paris."}]}


def _examples(spec, forced=None):
    return [e for s in load_sources(str(spec)) for e in examples_from_source(s, forced)]


@pytest.mark.parametrize("fmt", sorted(RECORDS))
def test_format_detected_from_keys(tmp_path, fmt):
    path = tmp_path / f"{fmt}.json"
    path.write_text(json.dumps([RECORDS[fmt]] * 3))
    examples = _examples(path)
    assert [e.format for e in examples] == [fmt] * 3
    assert task_type(examples) == ("text" if fmt in ("text", "completion") else "qa")


def test_detection_uses_keys_not_values(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"question": "What is 'messages' or 'conversations'?", "answer": "keys"}]))
    assert _examples(path)[0].format == "qa"


def test_openai_tool_calls_and_multi_turn(tmp_path):
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(TOOL_CALL) + "\n" + json.dumps(RECORDS["openai"]) + "\n")
    tools, multi = _examples(path)
    assert tools.messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert [m["role"] for m in multi.messages] == ["system", "user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt"])
def test_every_file_type(tmp_path, suffix):
    rows = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(4)]
    path = tmp_path / f"data{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"data": rows}))  # an object wrapping one list
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif suffix in (".csv", ".tsv"):
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, ["question", "answer"], delimiter="," if suffix == ".csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        import datasets

        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        path.write_text("first line\n\nsecond line\n")
    examples = _examples(path)
    if suffix == ".txt":
        assert [e.completion for e in examples] == ["first line", "second line"] and examples[0].format == "text"
    else:
        assert len(examples) == 4 and examples[3].messages[-1]["content"] == "a3"


def test_directory_glob_comma_list_and_format_subfolders(tmp_path):
    data = tmp_path / "datasets"
    (data / "alpaca").mkdir(parents=True)
    (data / "nested" / "deeper").mkdir(parents=True)
    # A folder named after a format forces it, even for records another format could match.
    (data / "alpaca" / "a.json").write_text(json.dumps([{"instruction": "i", "output": "o", "text": "t"}]))
    (data / "nested" / "deeper" / "q.jsonl").write_text(json.dumps(RECORDS["qa"]) + "\n")
    (data / "notes.md").write_text("ignored")
    assert sorted(e.format for e in _examples(data)) == ["alpaca", "qa"]
    assert len(_examples(f"{data}/**/*.json*")) == 2
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps([RECORDS["completion"]]))
    mixed = _examples(f"{extra},{data}/alpaca/")
    assert sorted(e.format for e in mixed) == ["alpaca", "completion"]


def test_save_to_disk_directory(tmp_path):
    import datasets

    target = tmp_path / "saved"
    datasets.Dataset.from_list([RECORDS["alpaca"]] * 2).save_to_disk(str(target))
    assert [e.format for e in _examples(target)] == ["alpaca", "alpaca"]


def test_forced_format_and_vision_records(tmp_path):
    path = tmp_path / "v.json"
    path.write_text(json.dumps([{"image": "cat.png", "caption": "A cat."}]))
    example = _examples(path)[0]
    assert example.format == "vision" and example.image == "cat.png"
    forced = tmp_path / "f.json"
    forced.write_text(json.dumps([{"text": "x", "prompt": "p", "completion": "c"}]))
    assert _examples(forced, "completion")[0].format == "completion"


@pytest.mark.parametrize(("content", "message"), [
    (b"[{\"question\": \"a\",\n \"answer\": }]", "malformed JSON at line 2"),
    (b"\xff\xfe broken", "not UTF-8"),
    (b"[1, 2]", "record 1 is a int"),
    (b"[{\"instruction\": \"x\", \"output\": \"y\"}, {\"instruction\": \"x\"}]", "record 2: missing field(s) output"),
    (b"[{\"foo\": 1}]", "known formats: alpaca, sharegpt"),
    (b"{\"question\": \"a\", \"answer\": \"b\"}\n{\"question\": \"c\"", "malformed JSON on line 2"),
])
def test_bad_files_name_file_and_record(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match="bad.json") as error:
        _examples(path)
    assert message in str(error.value)


def test_json_lines_saved_as_json_are_read(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text("\n".join(json.dumps(RECORDS["qa"]) for _ in range(3)) + "\n")
    assert [e.format for e in _examples(path)] == ["qa"] * 3


def test_missing_sources_are_clear(tmp_path):
    with pytest.raises(DataError, match="No files match"):
        load_sources(str(tmp_path / "*.json"))
    with pytest.raises(DataError, match="holds no data files"):
        load_sources(str(tmp_path))
    with pytest.raises(DataError, match="not a file, directory, glob"):
        load_sources(str(tmp_path / "missing.json"))


def test_unreachable_hub_dataset_is_one_clear_error(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # both libraries read offline mode once, at import: without these the test reaches for the network (and waits)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    with pytest.raises(DataError, match="Cannot load Hugging Face dataset 'nobody/no-such-dataset' split 'train'"):
        load_sources("nobody/no-such-dataset:train")


def test_dataset_spec_with_split_goes_through_load_dataset(tmp_path):
    # NAME:SPLIT is handed to datasets.load_dataset; a local dataset repository stands in for the Hub here.
    repo = tmp_path / "my-qa"
    (repo / "data").mkdir(parents=True)
    (repo / "data" / "train.jsonl").write_text("\n".join(json.dumps(RECORDS["qa"]) for _ in range(4)))
    (repo / "data" / "test.jsonl").write_text(json.dumps(RECORDS["qa"]))
    train, test = _examples(f"{repo}:train"), _examples(f"{repo}:test", "qa")
    assert len(train) == 4 and {e.format for e in train} == {"qa"}
    assert len(test) == 1
