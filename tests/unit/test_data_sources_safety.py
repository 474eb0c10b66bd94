"""--data files are read safely: only regular files (FIFOs, devices, sockets and dangling links refused by name,
without hanging), streamed with one record in memory at a time, and every error names the file and line."""

import csv
import json
import os
import socket
import threading

import pytest

from training.data import files as data_files
from training.data.formats import examples_from_source, refuse_images
from training.data.sources import DataError, load_sources

QA = {"question": "Où est \"Paris\"? \\ ✓ \u2028", "answer": "En France, 2.5e3 km.\n"}


def _load(spec, seconds=20):
    """load_sources in a thread, so a read that blocks fails the test instead of hanging it."""
    outcome = {}

    def target():
        try:
            outcome["sources"] = load_sources(str(spec))
        except Exception as exc:  # handed to the test thread, which asserts on it
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"reading {spec} did not finish in {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["sources"]


@pytest.mark.parametrize("how", ["file", "directory", "glob"])
def test_a_symlink_to_dev_zero_is_refused_by_name(tmp_path, how):
    data = tmp_path / "data"
    data.mkdir()
    (data / "zero.json").symlink_to("/dev/zero")
    spec = {"file": data / "zero.json", "directory": data, "glob": f"{data}/*.json"}[how]
    with pytest.raises(DataError) as error:
        _load(spec)
    assert str(error.value) == (f"{data / 'zero.json'} (a symlink to /dev/zero) is a character device, not a regular "
                                "file; --data reads regular files only.")


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    for spec in (fifo, tmp_path):
        with pytest.raises(DataError, match=f"{fifo} is a named pipe \\(FIFO\\), not a regular file"):
            _load(spec)


def test_a_socket_and_a_dangling_link_are_refused_by_name(tmp_path):
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s.csv"))
        with pytest.raises(DataError, match="s.csv is a socket, not a regular file"):
            _load(tmp_path / "s.csv")
    (tmp_path / "gone.json").symlink_to(tmp_path / "missing.json")
    with pytest.raises(DataError, match="gone.json: cannot open it: No such file or directory \\(a symlink to a "):
        _load(tmp_path / "gone.json")


def test_a_symlink_to_a_regular_file_is_read(tmp_path):
    real = tmp_path / "real.jsonl"
    real.write_text(json.dumps(QA) + "\n")
    (tmp_path / "link.jsonl").symlink_to(real)
    assert _load(tmp_path / "link.jsonl")[0].records == [QA]


def test_a_directory_loop_is_named_and_a_glob_through_it_reads_each_file_once(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.jsonl").write_text(json.dumps(QA) + "\n")
    (data / "sub" / "up").symlink_to(data)
    with pytest.raises(DataError, match="leads back to .*data \\(a directory symlink loop\\)"):
        _load(data)
    assert len(_load(f"{data}/**/*.jsonl")) == 1


ARRAY = [QA, {"n": [1, -2.5e-3, 10, True, False, None], "s": "\\u00e9 \\\" {[,]}", "t": "\t 模型 😀"},
         {"nested": {"a": [[], {}, [{"b": "c"}]]}, "number_at_end": 1234567890}] * 3


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 2**20])
@pytest.mark.parametrize("layout", ["array", "indented", "wrapper", "json-lines"])
def test_json_is_streamed_exactly_whatever_the_chunk_boundaries(tmp_path, monkeypatch, chunk, layout):
    monkeypatch.setattr(data_files, "CHUNK_BYTES", chunk)
    text = {"array": json.dumps(ARRAY, ensure_ascii=False), "indented": "\ufeff" + json.dumps(ARRAY, indent=3),
            "wrapper": json.dumps({"version": 2, "meta": {"x": [1]}, "data": ARRAY, "n": 5}),
            "json-lines": "\n".join(json.dumps(r, ensure_ascii=False) for r in ARRAY) + "\n"}[layout]
    path = tmp_path / "d.json"
    path.write_text(text, encoding="utf-8")
    assert data_files.read_json(path) == ARRAY


@pytest.mark.parametrize("chunk", [1, 5, 2**20])
@pytest.mark.parametrize(("text", "message"), [
    ('[\n  {"a": 1},\n  {"b": 2,, }\n]', "malformed JSON at line 3, column 11: Expecting property name"),
    ('[\n  {"a": 1}\n  {"b": 2}\n]', "malformed JSON at line 3, column 3: Expecting ',' delimiter"),
    ('[{"a": "unterminated}]', "malformed JSON at line 1, column 8: Unterminated string."),
    ('[{"a": 1}] [', "malformed JSON at line 1, column 12: Extra data"),
    ('{"a": 1}\n{"b": 2}\n{"c": }\n', "malformed JSON on line 3: Expecting value"),
    ("", "the file is empty"),
])
def test_json_errors_name_file_line_and_column_whatever_the_chunks(tmp_path, monkeypatch, chunk, text, message):
    monkeypatch.setattr(data_files, "CHUNK_BYTES", chunk)
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError) as error:
        data_files.read_json(path)
    assert str(error.value).startswith(f"{path}: {message}")


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".txt"])
def test_a_bad_byte_names_its_line(tmp_path, monkeypatch, suffix):
    monkeypatch.setattr(data_files, "CHUNK_BYTES", 4)
    path = tmp_path / f"latin1{suffix}"
    lines = {".json": ['[{"question": "q",', '"answer": "a"},', '{"question": "caf\xe9", "answer": "b"}]'],
             ".jsonl": ['{"question": "q", "answer": "a"}', '{"question": "q", "answer": "a"}', '{"question": "\xe9"}'],
             ".csv": ["question,answer", "q,a", "caf\xe9,b"], ".txt": ["one", "two", "thr\xe9e"]}[suffix]
    path.write_bytes("\n".join(lines).encode("latin-1"))
    with pytest.raises(DataError, match=f"{path}: not UTF-8 text \\(bad byte at line 3\\)"):
        load_sources(str(path))


def test_one_record_above_the_cap_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data_files, "MAX_RECORD_BYTES", 1000)
    monkeypatch.setattr(data_files, "CHUNK_BYTES", 64)
    small, big = {"text": "x"}, {"text": "y" * 5000}
    array = tmp_path / "big.json"
    array.write_text(json.dumps([small, small, big]))
    with pytest.raises(DataError, match=f"{array}: the JSON value at line 1, column 32 is larger than 0 MiB"):
        data_files.read_json(array)
    lines = tmp_path / "big.jsonl"
    lines.write_text(f"{json.dumps(small)}\n{json.dumps(big)}\n")
    with pytest.raises(DataError, match=f"{lines}: line 2 is larger than"):
        data_files.read_json_lines(lines)
    zeros = tmp_path / "zeros.txt"  # a regular file with no line end: one runaway line
    zeros.write_bytes(b"\0" * 5000)
    with pytest.raises(DataError, match=f"{zeros}: line 1 is larger than"):
        data_files.read_text(zeros)
    table = tmp_path / "long.csv"  # lines under the cap, one quoted field over it
    table.write_text('question,answer\nq,"' + "long line\n" * 200 + '"\n')
    with pytest.raises(DataError, match=f"{table}: malformed CSV in record 1 \\(from line 2\\): field larger than field limit"):
        data_files.read_delimited(table, ",")


def test_csv_streams_multiline_fields_and_names_bad_rows(tmp_path):
    path = tmp_path / "d.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["question", "answer"], ["q1", "line one\nline two"], ["q2", "a2"]])
    assert data_files.read_delimited(path, ",") == [{"question": "q1", "answer": "line one\nline two"},
                                                   {"question": "q2", "answer": "a2"}]
    path.write_text("question,answer\nq1,a1\nq2,a2,surplus\n")
    with pytest.raises(DataError, match=f"{path}: record 2 \\(from line 3\\) has more fields than the 2 of the header"):
        data_files.read_delimited(path, ",")
    long_answer = "word " * 40_000  # above the csv module's default field limit of 128 KiB
    path.write_text(f"question,answer\nq,{long_answer}\n")
    assert data_files.read_delimited(path, ",")[0]["answer"] == long_answer


def test_image_examples_on_a_text_only_model_name_file_and_record(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(QA) + "\n")
    images = tmp_path / "b.jsonl"
    images.write_text("\n".join(json.dumps({"image": f"{n}.png", "caption": "A cat."}) for n in range(2)) + "\n")
    examples = [e for source in load_sources(str(tmp_path)) for e in examples_from_source(source, None)]
    refuse_images(examples[:1], "tiny (llama)")  # text only: nothing to refuse
    with pytest.raises(DataError, match=f"{images}, record 1: an image example \\(2 in the dataset\\), but tiny "):
        refuse_images(examples, "tiny (llama)")
