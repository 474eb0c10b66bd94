"""Preference pairs seen as SFT examples. Reading the preference format itself (TRL's prompt/chosen/rejected
records) is training/data/formats/preference.py."""

from __future__ import annotations

from training.data.formats import Example


def chosen_example(example: Example) -> Example:
    """A preference pair (or a KTO example) as the SFT example of its chosen (or labelled) answer: what evaluation
    scores answers against."""
    if example.is_chat:
        return Example("openai", example.origin, example.index, messages=example.messages + example.chosen)
    return Example("completion", example.origin, example.index, prompt=example.prompt, completion=example.chosen)
