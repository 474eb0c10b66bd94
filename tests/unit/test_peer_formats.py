"""Data prepared for other trainers (LLaMA-Factory, axolotl, TRL, OpenAI fine-tuning), read as its origin defines
it: fixtures in tests/fixtures/peer_formats/ written from those projects' documentation. Tool calls, preference
shapes, conversational prompt-completion, one-object files, skipped records, LLaMA-Factory's dataset_info.json,
text windows, and one evaluation per point of an epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.data.formats import read_examples
from training.data.sources import DataError, SourceRecords, read_file

PEERS = Path(__file__).resolve().parent.parent / "fixtures" / "peer_formats"
SEARCH = {"type": "function", "function": {"name": "search_recipes", "arguments": {"ingredients": ["eggs"]}}}


def _read(name: str, strict: bool = False):
    return read_examples(read_file(PEERS / name), None, strict)


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def _trained(tokenizer, tokenized) -> list[str]:
    from training.data.tokenize import shown

    return shown(tokenizer, tokenized)[1]


# --- tool calls ------------------------------------------------------------------------------------
def test_glaive_function_calls_and_observations_become_tool_calls_and_results_with_the_tools():
    read = _read("glaive_toolcall_en_demo.json")
    first, _, third = (read.examples[0], None, read.examples[2])
    assert read.format == "sharegpt" and len(read.examples) == 3
    assert [m["role"] for m in third.messages] == ["user", "assistant", "tool", "assistant"]
    assert third.messages[1] == {"role": "assistant", "content": "", "tool_calls": [SEARCH]}
    assert third.messages[2]["content"] == '{"recipes": [{"name": "Omelette"}]}'
    assert [t["function"]["name"] for t in first.tools] == ["search_recipes"]  # the JSON-string column, parsed
    assert first.tools[0]["type"] == "function" and "parameters" in first.tools[0]["function"]


def test_a_call_is_written_the_same_way_from_glaive_and_openai_and_the_server_parses_it_back(tokenizer):
    from serving.tools import parse_tool_calls
    from training.data.formats import convert_record
    from training.data.tokenize import tokenize_example

    glaive = convert_record({"conversations": [{"from": "human", "value": "Eggs?"}, {"from": "function_call",
                            "value": json.dumps({"name": "search_recipes", "arguments": {"ingredients": ["eggs"]}})}]},
                            "sharegpt", "g.json", 0)
    openai = convert_record({"messages": [{"role": "user", "content": "Eggs?"}, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "search_recipes",
                                                       "arguments": '{"ingredients": ["eggs"]}'}}]}]},
                            "openai", "o.json", 0)
    [glaive_span], [openai_span] = (_trained(tokenizer, tokenize_example(tokenizer, e, 256)) for e in (glaive, openai))
    assert glaive_span == openai_span and glaive_span.startswith("<tool_call>")
    _text, calls = parse_tool_calls(glaive_span, {"search_recipes"})
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("search_recipes", {"ingredients": ["eggs"]})]


TOOLS_TEMPLATE = (  # a template that reads tool definitions and renders tool calls (as Qwen's and Hermes' do)
    "{% if tools %}<|tools|>{{ tools | tojson }}\n{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>{% if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }}"
    "</call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_a_template_with_tool_support_gets_the_definitions_and_only_the_call_is_trained(tokenizer):
    from training.data.tokenize import tokenize_example

    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = TOOLS_TEMPLATE
    example = _read("glaive_toolcall_en_demo.json").examples[2]
    tokenized = tokenize_example(tokenizer, example, 512)
    text = tokenizer.decode(tokenized.input_ids)
    assert text.startswith("<|tools|>") and "Search for recipes based on ingredients" in text
    trained = _trained(tokenizer, tokenized)
    assert trained[0].startswith("<call>search_recipes</call>") and not any("Omelette\"" in t for t in trained)
    assert not any("tools" in t or "Search for recipes" in t for t in trained)


def test_openai_fine_tuning_weight_zero_is_context_and_top_level_tools_are_kept(tokenizer):
    from training.data.tokenize import tokenize_example

    marv, weather = _read("openai_finetune.jsonl").examples
    assert marv.context_turns == frozenset({2}) and weather.tools[0]["function"]["name"] == "get_current_weather"
    trained = _trained(tokenizer, tokenize_example(tokenizer, marv, 512))
    assert len(trained) == 1 and trained[0].startswith("Paris, as if everyone")


# --- preference shapes, prompt-completion, one object ------------------------------------------------
@pytest.mark.parametrize("name", ["dpo_en_demo.json", "axolotl_dpo_messages.json"])
def test_single_message_answers_with_the_prompt_in_conversations_or_messages_are_pairs(name):
    read = _read(name)
    first = read.examples[0]
    assert read.format == "preference" and first.messages[-1]["role"] == "user"
    assert [m["role"] for m in first.chosen] == ["assistant"] == [m["role"] for m in first.rejected]
    assert first.chosen[0]["content"] in ("Yes, on a clear day the sky looks blue.", "Rome.")


def test_trl_conversational_prompt_completion_trains_the_completion_only(tokenizer):
    from training.data.formats import task_type
    from training.data.tokenize import tokenize_example

    read = _read("trl_prompt_completion_conversational.jsonl")
    example = read.examples[0]
    assert read.format == "completion" and example.is_chat and task_type(read.examples) == "qa"
    assert _trained(tokenizer, tokenize_example(tokenizer, example, 256))[0].startswith("It is blue.")


def test_a_json_file_holding_one_conversation_object_is_one_example():
    read = _read("axolotl_conversation.json")
    assert read.format == "sharegpt" and len(read.examples) == 1 and len(read.examples[0].messages) == 4


def test_one_conversation_object_keeps_its_system_prompt(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"system": "Answer in French.", "conversations": [
        {"from": "human", "value": "Hello?"}, {"from": "gpt", "value": "Bonjour."}]}))
    read = read_examples(read_file(path), None)
    assert [m["role"] for m in read.examples[0].messages] == ["system", "user", "assistant"]
    assert read.examples[0].messages[0]["content"] == "Answer in French."


# --- skipped records ------------------------------------------------------------------------------
def test_an_empty_answer_is_skipped_and_counted_or_refused_with_strict_data(tokenizer):
    from training.data.tokenize import tokenize_examples

    examples = _read("glaive_toolcall_en_demo.json").examples
    result = tokenize_examples(tokenizer, examples, 512)
    assert len(result.tokenized) == 2 and [(e.index, why) for e, why in result.skipped] == [
        (1, "the assistant's answer is empty")]
    with pytest.raises(DataError, match=r"glaive_toolcall_en_demo\.json, record 2: the assistant's answer is empty\. "
                                        r"\(--strict-data\)$"):
        tokenize_examples(tokenizer, examples, 512, strict=True)


def test_an_answer_cut_off_entirely_is_skipped_and_named_with_the_limit(tokenizer):
    from training.data.formats import convert_record
    from training.data.tokenize import tokenize_examples

    long = convert_record({"instruction": "word " * 80, "output": "yes"}, "alpaca", "a.json", 0)
    short = convert_record({"instruction": "hi", "output": "hello"}, "alpaca", "a.json", 1)
    result = tokenize_examples(tokenizer, [long, short], 32)
    assert result.examples == [short] and [(e.index, why) for e, why in result.skipped] == [
        (0, "answer cut off by --max-seq-length")]
    with pytest.raises(DataError, match=r"^1 example\(s\) whose answer was cut off entirely by the sequence length "
                                        r"limit \(32 tokens, --max-seq-length\), first: a\.json record 1"):
        tokenize_examples(tokenizer, [long, short], 32, strict=True)


# --- long text documents ----------------------------------------------------------------------------
def test_a_long_text_document_is_split_into_windows_that_train_every_token(tokenizer):
    from training.data.tokenize import tokenize_example, tokenize_examples

    examples = _read("wiki_demo.txt").examples
    whole = tokenize_example(tokenizer, examples[0], 1 << 20)
    result = tokenize_examples(tokenizer, examples, 64)
    windows = [t for e, t in zip(result.examples, result.tokenized, strict=True) if e.index == 0]
    assert len(windows) == -(-len(whole.input_ids) // 64) and all(len(w.input_ids) <= 64 for w in windows)
    assert [i for w in windows for i in w.input_ids] == whole.input_ids  # nothing cut, nothing repeated
    assert not any(t.truncated for t in result.tokenized)


# --- LLaMA-Factory's dataset_info.json -----------------------------------------------------------------
def _catalogue(spec: str):
    from training.data.formats.llamafactory import catalogue_entries, catalogue_spec, rewrite

    path, names = catalogue_spec(spec)
    out = {}
    for entry in catalogue_entries(path, names):
        source = read_file(entry.path)
        records = [rewrite(r, entry, f"{entry.name} {i}") for i, r in enumerate(source.records)]
        out[entry.name] = read_examples(SourceRecords(source.origin, records), None)
    return out


def test_a_llamafactory_catalogue_reads_each_entry_as_declared():
    reads = _catalogue(str(PEERS))
    assert {name: read.format for name, read in reads.items()} == {
        "glaive_toolcall_en_demo": "sharegpt", "kto_en_demo": "kto", "dpo_en_demo": "preference",
        "identity": "sharegpt", "wiki_demo": "text"}
    assert [e.label for e in reads["kto_en_demo"].examples] == [True, False, True, False]
    assert reads["glaive_toolcall_en_demo"].examples[2].messages[1]["tool_calls"] == [SEARCH]
    assert reads["glaive_toolcall_en_demo"].examples[0].tools[0]["function"]["name"] == "search_recipes"
    picked = _catalogue(f"{PEERS / 'dataset_info.json'}:identity,dpo_en_demo")
    assert list(picked) == ["identity", "dpo_en_demo"]


def test_a_hub_entry_of_the_catalogue_is_one_sentence():
    with pytest.raises(DataError, match=r"dataset 'alpaca_en' is on llamafactory/alpaca_en, not a local file"):
        _catalogue(f"{PEERS}:alpaca_en")


def test_a_datasets_save_to_disk_folder_is_not_taken_for_a_catalogue(tmp_path):
    from training.data.formats.llamafactory import catalogue_spec

    (tmp_path / "dataset_info.json").write_text(json.dumps({"citation": "", "features": {"text": {"dtype": "string"}}}))
    assert catalogue_spec(str(tmp_path)) is None


# --- detection stays unambiguous ----------------------------------------------------------------------
@pytest.mark.parametrize(("record", "expected"), [
    ({"messages": [], "label": True}, "kto"),
    ({"conversations": [], "chosen": {}, "rejected": {}}, "preference"),
    ({"prompt": [], "completion": [], "label": False}, "kto"),
    ({"prompt": [], "completion": []}, "completion"),
    ({"messages": [], "tools": []}, "openai"),
])
def test_ambiguous_shapes_resolve_by_the_documented_order(record, expected):
    from training.data.formats import detect_format

    assert detect_format(record) == expected


# --- one evaluation per point -----------------------------------------------------------------------------
@pytest.mark.parametrize(("steps", "evaluations", "points"), [
    (113, 2, {57, 113}), (29, 2, {15, 29}), (10, 5, {2, 4, 6, 8, 10}), (3, 5, {1, 2, 3}), (7, 1, {7})])
def test_an_epoch_evaluates_once_per_point_and_last_at_its_end(steps, evaluations, points):
    from training.schedule import evaluation_points

    assert evaluation_points(steps, evaluations) == points
