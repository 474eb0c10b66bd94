"""Metrics of generated answers against reference answers: exact match, ROUGE-L (rouge-score) and corpus
BLEU (sacrebleu). Both libraries compute locally; nothing is fetched.

- exact match: the answers are equal after whitespace normalisation (leading and trailing whitespace
  dropped, every run of spaces, tabs and newlines made one space); case and punctuation count.
- ROUGE-L: the mean F-measure of the longest common subsequence of words over the answers. Words are
  lowercased runs of letters and digits in any script (rouge-score's own tokenizer keeps only a-z and
  0-9, which would score every non-Latin answer 0).
- BLEU: sacrebleu's corpus BLEU (0-100, its standard 13a tokenizer), with effective n-gram order, so a set
  of answers shorter than four words is scored on the orders it has instead of 0.
"""

from __future__ import annotations

import re

WORD = re.compile(r"[^\W_]+")


def normalise(text: str) -> str:
    """`text` with surrounding whitespace removed and inner whitespace runs made one space."""
    return " ".join(text.split())


class _Words:
    """rouge-score's tokenizer interface: lowercased words of any script."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return WORD.findall(text.lower())


def exact_match(predictions: list[str], references: list[str]) -> float:
    """The share of predictions equal to their reference after whitespace normalisation."""
    _check(predictions, references)
    return sum(normalise(p) == normalise(r) for p, r in zip(predictions, references, strict=True)) / len(predictions)


def rouge_l(predictions: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F-measure (0-1)."""
    from rouge_score.rouge_scorer import RougeScorer

    _check(predictions, references)
    scorer = RougeScorer(["rougeL"], tokenizer=_Words())
    scores = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return sum(scores) / len(scores)


def bleu(predictions: list[str], references: list[str]) -> float:
    """sacrebleu corpus BLEU (0-100)."""
    from sacrebleu.metrics import BLEU

    _check(predictions, references)
    return float(BLEU(effective_order=True).corpus_score(predictions, [references]).score)


def answer_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    """exact_match, rouge_l and bleu of `predictions` against `references`."""
    return {"exact_match": exact_match(predictions, references), "rouge_l": rouge_l(predictions, references),
            "bleu": bleu(predictions, references)}


def _check(predictions: list[str], references: list[str]) -> None:
    if not predictions or len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
