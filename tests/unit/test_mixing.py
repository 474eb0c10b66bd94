"""Weighted --data mixes: the ENTRY@N spelling, per-entry validation with the token cap, weights applied to
training examples only, and the shares every epoch trains on."""

from __future__ import annotations

import json
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from training.batching import epoch_steps
from training.data.mixing import is_mix, share_lines, split_sources
from training.data.sources import DataError, load_sources
from training.data.spec import DataEntry, format_data, parse_data
from training.errors import ConfigError
from training.planning import MIN_VALIDATION_EXAMPLES, split_examples
from training.resume import data_fingerprint


def _mix(sizes: dict[str, tuple[int, float]], length=10):
    """Fake tokenized examples, examples and sources: entry -> (examples, weight)."""
    tokenized, examples, sources = [], [], []
    for entry, (count, weight) in sizes.items():
        sources.append(SimpleNamespace(origin=f"{entry}.json", entry=entry, weight=weight))
        for i in range(count):
            tokenized.append(SimpleNamespace(input_ids=[0] * length, name=f"{entry}-{i}"))
            examples.append(SimpleNamespace(origin=f"{entry}.json"))
    return tokenized, examples, sources


def _entry(item) -> str:
    return item.name.split("-")[0]


def test_the_weight_spelling_is_not_confused_with_globs_windows_paths_or_hub_splits():
    spec = r"chat.json@3, docs/*.jsonl@0.5,squad:train@2,C:\data\x.json@1.5,logs/run*3,a@b.json,plain.json,d/@.25"
    assert parse_data(spec) == [DataEntry("chat.json", 3), DataEntry("docs/*.jsonl", 0.5), DataEntry("squad:train", 2),
                                DataEntry(r"C:\data\x.json", 1.5), DataEntry("logs/run*3"), DataEntry("a@b.json"),
                                DataEntry("plain.json"), DataEntry("d/", 0.25)]
    assert format_data(parse_data(spec)) == spec.replace(" ", "").replace("@.25", "@0.25")
    for bad in ("a.json@0", "a.json@-1", "a.json@0.0", "a.json@1e999"):
        with pytest.raises(ConfigError, match="above 0"):
            parse_data(bad)


def test_a_3_to_1_mix_trains_on_the_expected_shares_every_epoch():
    tokenized, examples, sources = _mix({"chat": (50, 3.0), "docs": (50, 1.0)})
    split, shares = split_sources(tokenized, examples, sources, 0.1, seed=1, evals_per_epoch=2)
    held = {id(t) for t in split.val}
    assert Counter(_entry(t) for t in split.val) == {"chat": 5, "docs": 5}  # each entry validated
    assert not held & {id(t) for t in split.train}  # no copy of a held-out example is trained on
    assert Counter(_entry(t) for t in split.train) == {"chat": 45 * 3, "docs": 45}
    assert Counter(t.name for t in split.train if _entry(t) == "chat") == {n: 3 for n in
                                                                            {t.name for t in split.train if _entry(t) == "chat"}}
    for epoch in range(3):  # the loop's seeded per-epoch shuffle, cut into optimizer steps of 8
        seen = Counter(_entry(split.train[i]) for step in epoch_steps(len(split.train), 8, 1, epoch) for i in step)
        assert seen == {"chat": 135, "docs": 45} and seen["chat"] / sum(seen.values()) == 0.75
    assert [(s.entry, s.examples, s.validation, s.per_epoch, s.share) for s in shares] == [
        ("chat", 50, 5, 135, 0.75), ("docs", 50, 5, 45, 0.25)]
    assert is_mix(shares)
    lines = share_lines(shares)
    assert lines[0] == "Mix: chat x3: 50 examples, 5 held out for validation; 135 per epoch = 75.0% of each epoch."
    assert "weighted: 180 training examples per epoch" in split.note


def test_a_fraction_trains_on_a_seeded_share_of_its_entry():
    tokenized, examples, sources = _mix({"big": (200, 0.25), "small": (20, 1.0)})
    split, shares = split_sources(tokenized, examples, sources, 0.1, seed=3, evals_per_epoch=1)
    trained = [t.name for t in split.train if _entry(t) == "big"]
    assert len(trained) == 45 and len(set(trained)) == 45  # 180 left after validation, a quarter of them, once each
    again, _ = split_sources(tokenized, examples, sources, 0.1, seed=3, evals_per_epoch=1)
    assert [t.name for t in again.train] == [t.name for t in split.train]
    other, _ = split_sources(tokenized, examples, sources, 0.1, seed=4, evals_per_epoch=1)
    assert {t.name for t in other.train if _entry(t) == "big"} != set(trained)
    assert [s.per_epoch for s in shares] == [45, 18]
    mixed, _ = split_sources(*_mix({"x": (10, 2.5)}), 0, seed=0, evals_per_epoch=1)
    assert sorted(Counter(t.name for t in mixed.train).values()) == [2] * 5 + [3] * 5  # 25: two copies and half a third


def test_one_unweighted_entry_splits_exactly_as_before():
    def old_split(tokenized, fraction, seed, budget):  # the engine's split before mixes, for reference
        order = list(range(len(tokenized)))
        random.Random(seed).shuffle(order)
        wanted = round(len(order) * fraction)
        chosen, used = [], 0
        for index in order[:wanted]:
            size = len(tokenized[index].input_ids)
            if len(chosen) >= MIN_VALIDATION_EXAMPLES and used + size > budget:
                break
            chosen.append(index)
            used += size
        return [i for i in order if i not in set(chosen)], chosen

    rng = random.Random(0)
    tokenized = [SimpleNamespace(input_ids=[0] * rng.randint(5, 400), name=f"only-{i}") for i in range(300)]
    examples = [SimpleNamespace(origin="only.json")] * 300
    sources = [SimpleNamespace(origin="only.json", entry="only", weight=1.0)]
    for evals in (1, 5, 40):  # the cap binds harder with more evaluations per epoch
        split, shares = split_sources(tokenized, examples, sources, 0.2, seed=9, evals_per_epoch=evals)
        budget = min(100_000, 0.1 * 3 * sum(len(t.input_ids) for t in tokenized) / evals)
        train, val = old_split(tokenized, 0.2, 9, budget)
        assert split.train_index == train and split.val_index == val
        assert split.train == [tokenized[i] for i in train] and not is_mix(shares)
    assert "capped from 60 by tokens" in split.note


def test_the_token_cap_still_validates_every_entry():
    tokenized, examples, sources = _mix({"a": (100, 1.0), "b": (100, 2.0), "c": (3, 1.0), "d": (1, 1.0)}, length=50)
    split = split_examples(tokenized, 0.1, 5, evals_per_epoch=100, groups=[e.origin for e in examples])
    assert Counter(_entry(tokenized[i]) for i in split.val_index) == {"a": 2, "b": 2, "c": 1}  # capped at 5
    assert "capped from 21 by tokens" in split.note
    full, shares = split_sources(tokenized, examples, sources, 0.1, 5, evals_per_epoch=1)
    assert Counter(_entry(t) for t in full.val) == {"a": 10, "b": 10, "c": 1}  # proportional; d has one example
    assert "too few to hold one out" in share_lines(shares)[3]
    few, _ = split_sources(*_mix({"a": (20, 1.0), "b": (20, 1.0)}), 0.1, 5, evals_per_epoch=1)
    assert few.val == [] and "no validation set" in few.note  # 4 wanted: below the minimum, as before


def _files(tmp_path, **counts):
    for name, count in counts.items():
        (tmp_path / f"{name}.json").write_text(json.dumps([{"question": f"{name} {i}?", "answer": "x"}
                                                           for i in range(count)]))


def test_sources_carry_their_entry_and_weight_and_a_file_named_twice_is_refused(tmp_path):
    _files(tmp_path, a=3, b=4, c=5)
    sources = load_sources(f"{tmp_path}/a.json@3,{tmp_path}/[bc].json@0.5")
    assert [(s.origin.split("/")[-1], s.entry.split("/")[-1], s.weight) for s in sources] == [
        ("a.json", "a.json", 3.0), ("b.json", "[bc].json", 0.5), ("c.json", "[bc].json", 0.5)]
    with pytest.raises(DataError, match=r"a.json is named twice in --data .*give it a weight \(@N\) instead"):
        load_sources(f"{tmp_path}/*.json,{tmp_path}/a.json@3")


def test_weights_are_part_of_the_data_fingerprint(tmp_path):
    _files(tmp_path, a=3, b=4)
    plain = data_fingerprint(load_sources(f"{tmp_path}/a.json,{tmp_path}/b.json"))
    assert plain == data_fingerprint([SimpleNamespace(sha256=s.sha256, origin="", records=[], weight=1.0)
                                      for s in load_sources(f"{tmp_path}/a.json,{tmp_path}/b.json")])
    weighted = data_fingerprint(load_sources(f"{tmp_path}/a.json@3,{tmp_path}/b.json"))
    assert len({plain, weighted, data_fingerprint(load_sources(f"{tmp_path}/a.json@2,{tmp_path}/b.json"))}) == 3
