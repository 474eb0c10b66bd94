"""The GPU check's fixed synthetic dataset and its tokenizer.

Alpaca records ({"instruction", "input", "output"}: what `--data` reads and bench/baselines/trainer_peft.py's
format) of pseudo-words, seeded: a question of 20-90 words and an answer making the example about 256-1024
tokens once rendered with the chat template (uniformly spread, about 640 on average), as instruction sets are.
The tokenizer is the installer's own byte-level BPE with ChatML tokens and template
(sources.builtin.train_bpe_tokenizer), trained on the same words: most words are one token, some two. Its ids
fit both model shapes' vocabularies (the models' extra rows are simply never looked up).
"""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

SYLLABLES = ("ka", "lo", "mi", "re", "tu", "sa", "ne", "vo", "pi", "da", "go", "he", "ju", "ba", "ze", "ri", "mo",
             "fa", "el", "an", "or", "is", "un", "ti", "co", "ra", "ve", "xi", "qu", "ly")
WORDS = 4000  # distinct pseudo-words
TOKENIZER_VOCAB = 8192
MIN_TOKENS, MAX_TOKENS = 256, 1024


def vocabulary(seed: int = 0) -> list[str]:
    """WORDS distinct pseudo-words of 1-4 syllables, seeded."""
    rng = random.Random(seed)
    words: list[str] = []
    seen = set()
    while len(words) < WORDS:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _sentence(rng: random.Random, words: list[str], count: int) -> str:
    parts = []
    while count > 0:
        size = min(count, rng.randint(6, 16))
        chunk = [rng.choice(words) for _ in range(size)]
        chunk[0] = chunk[0].capitalize()
        parts.append(" ".join(chunk) + rng.choice(".,.;."))
        count -= size
    return " ".join(parts)


def make_records(count: int, seed: int = 0, min_tokens: int = MIN_TOKENS, max_tokens: int = MAX_TOKENS) -> list[dict]:
    """`count` alpaca records whose lengths in words spread uniformly over [min_tokens, max_tokens) minus the
    template's few tokens (a word is about one token of the tokenizer below)."""
    rng = random.Random(seed)
    words = vocabulary(seed)
    records = []
    for _ in range(count):
        total = rng.randint(min_tokens, max_tokens - 1) - 12  # ChatML markers and punctuation
        question = rng.randint(20, 90)
        answer = max(8, int((total - question) * 0.85))  # punctuation and a few two-token words fill the rest
        records.append({"instruction": _sentence(rng, words, question).rstrip(".,;") + "?", "input": "",
                        "output": _sentence(rng, words, answer)})
    return records


def write_records(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def build_tokenizer(dest: Path, seed: int = 0, vocab_size: int = TOKENIZER_VOCAB):
    """The installer's ChatML byte-level BPE (sources.builtin) trained on the pseudo-words, saved in `dest`."""
    from sources.builtin import train_bpe_tokenizer

    rng = random.Random(seed + 1)
    words = vocabulary(seed)
    texts = [_sentence(rng, words, 64) for _ in range(3000)] + [" ".join(words), "system user assistant"] * 3
    return train_bpe_tokenizer(texts, vocab_size, dest, max_length=8192)


def chat_ids(tokenizer, record: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, whole example ids) of a record rendered with the chat template, as the Trainer baseline
    tokenizes it (bench/baselines/trainer_peft.py)."""
    prompt = [{"role": "user", "content": record["instruction"]}]
    full = prompt + [{"role": "assistant", "content": record["output"]}]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(full, tokenize=True, return_dict=True)["input_ids"]
    return list(prompt_ids), list(full_ids)


def length_summary(lengths: list[int]) -> dict:
    """min, median, mean, max and total of token counts."""
    if not lengths:
        return {"examples": 0}
    return {"examples": len(lengths), "min": min(lengths), "median": int(statistics.median(lengths)),
            "mean": round(statistics.fmean(lengths), 1), "max": max(lengths), "total": sum(lengths)}
