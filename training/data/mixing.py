"""Weighted dataset mixes: validation drawn per --data entry, then each entry's training examples repeated
(or, for a fraction, sampled) to its weight before the epoch's shuffle, so every epoch trains on the
shares the weights ask for.

Held-out examples are taken before any repetition, so no copy of a validation example is ever trained on.
--replay adds one more entry after the split: general examples (training/forgetting/), never validated.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, replace

from training.planning import Split, split_examples

MAX_LOGGED_ENTRIES = 20
REPLAY_ENTRY = "general replay"


@dataclass
class EntryShare:
    """What one --data entry contributes to each epoch."""

    entry: str
    weight: float
    sources: int  # files (or datasets) the entry named
    examples: int  # its examples (after --max-examples)
    validation: int  # of them held out for validation
    per_epoch: int  # training examples it contributes to each epoch, after weighting
    share: float  # of the epoch's training examples
    replay: bool = False  # --replay's general examples (never validated)

    def as_dict(self) -> dict:
        return asdict(self)


def example_entries(examples: list, sources: list) -> list[str]:
    """The --data entry of each example (examples carry their source's origin)."""
    entry_of = {s.origin: s.entry for s in sources}
    return [entry_of.get(e.origin, "") for e in examples]


def weighted_counts(train_index: list[int], entries: list[str], weights: dict[str, float], seed: int) -> dict[int, int]:
    """How many times each training example appears per epoch: an entry of n training examples and weight w
    contributes round(w x n) (at least 1): whole copies, then a seeded sample for the fraction."""
    members: dict[str, list[int]] = {}
    for index in train_index:
        members.setdefault(entries[index], []).append(index)
    counts = dict.fromkeys(train_index, 1)
    for number, (entry, indices) in enumerate(members.items()):
        weight = weights.get(entry, 1.0)
        if weight == 1:
            continue
        wanted = max(1, int(weight * len(indices) + 0.5))
        copies, extra = divmod(wanted, len(indices))
        sampled = set(random.Random(seed * 1_000_003 + number).sample(indices, extra))
        for index in indices:
            counts[index] = copies + (index in sampled)
    return counts


def split_sources(tokenized: list, examples: list, sources: list, fraction: float, seed: int,
                  evals_per_epoch: int) -> tuple[Split, list[EntryShare]]:
    """The run's split: validation drawn per --data entry, training examples repeated to the entries' weights
    (in the order of the unweighted split; the loop shuffles every epoch). Returns it with each entry's share."""
    entries = example_entries(examples, sources)
    split = split_examples(tokenized, fraction, seed, evals_per_epoch, entries)
    weights = {s.entry: s.weight for s in sources}
    counts = weighted_counts(split.train_index, entries, weights, seed)
    train_index = [i for i in split.train_index for _ in range(counts[i])]
    shares = _shares(sources, entries, split.val_index, train_index)
    if train_index != split.train_index:
        split = Split([tokenized[i] for i in train_index], split.val,
                      f"{split.note}; weighted: {len(train_index)} training examples per epoch", train_index,
                      split.val_index)
    return split, shares


def _shares(sources: list, entries: list[str], val_index: list[int], train_index: list[int]) -> list[EntryShare]:
    order = list(dict.fromkeys(s.entry for s in sources))
    weights = {s.entry: s.weight for s in sources}
    files = {entry: sum(1 for s in sources if s.entry == entry) for entry in order}
    total, held, per_epoch = ({entry: 0 for entry in order} for _ in range(3))
    for entry in entries:
        total[entry] += 1
    for index in val_index:
        held[entries[index]] += 1
    for index in train_index:
        per_epoch[entries[index]] += 1
    epoch = max(1, len(train_index))
    return [EntryShare(entry, weights[entry], files[entry], total[entry], held[entry], per_epoch[entry],
                       per_epoch[entry] / epoch) for entry in order]


def replay_count(training_examples: int, fraction: float) -> int:
    """Replay examples per epoch so that they are `fraction` of it beside `training_examples` others."""
    return max(1, round(fraction * training_examples / (1 - fraction)))


def add_replay(split: Split, shares: list[EntryShare], replay: list, fraction: float,
               seed: int) -> tuple[Split, list[EntryShare]]:
    """The split with `fraction` of every epoch's training examples taken from `replay` (the base model's own
    answers to general prompts), repeated or sampled to that count as a weighted entry is, and the shares with a
    replay entry (every other entry's share of the epoch shrinks accordingly). Validation is untouched."""
    if not fraction or not replay:
        return split, shares
    wanted = replay_count(len(split.train), fraction)
    index = list(range(len(replay)))
    counts = weighted_counts(index, [REPLAY_ENTRY] * len(replay), {REPLAY_ENTRY: wanted / len(replay)}, seed)
    extra = [replay[i] for i in index for _ in range(counts[i])]
    epoch = len(split.train) + len(extra)
    shares = [replace(share, share=share.per_epoch / epoch) for share in shares] + [
        EntryShare(f"{REPLAY_ENTRY} (the base model's answers to {len(replay)} general prompts, --replay {fraction:g})",
                   1.0, 1, len(replay), 0, len(extra), len(extra) / epoch, replay=True)]
    note = f"{split.note}; --replay {fraction:g}: {len(extra)} general examples per epoch"
    return Split(split.train + extra, split.val, note, split.train_index, split.val_index), shares


def is_mix(shares: list[EntryShare]) -> bool:
    """Several entries, or a weight: worth a line per entry in the log and a `mix` in adapter_info.json."""
    return len(shares) > 1 or any(s.weight != 1 for s in shares)


def share_lines(shares: list[EntryShare]) -> list[str]:
    """One log line per --data entry: examples, held-out, weight, and its part of every epoch."""
    lines, validating = [], any(s.validation for s in shares)
    for share in shares[:MAX_LOGGED_ENTRIES]:
        files = f" in {share.sources} files" if share.sources > 1 else ""
        held = f", {share.validation} held out for validation" if share.validation else \
            ", never validated" if share.replay else ", too few to hold one out for validation" if validating else ""
        weight = f" x{share.weight:g}" if share.weight != 1 else ""
        lines.append(f"Mix: {share.entry}{weight}: {share.examples} examples{files}{held}; {share.per_epoch} per "
                     f"epoch = {share.share:.1%} of each epoch.")
    if len(shares) > MAX_LOGGED_ENTRIES:
        lines.append(f"Mix: ... and {len(shares) - MAX_LOGGED_ENTRIES} more entries (adapter_info.json lists all).")
    return lines
