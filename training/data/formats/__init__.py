"""Dataset formats: detected from the keys of each file's records, converted to one shape.

A chat-like record (alpaca, ShareGPT, OpenAI messages, QA, image captions) becomes a list of messages rendered
later with the model's chat template; completion and text records become a prompt/completion pair; preference
records a prompt with a chosen and a rejected answer.

One module per format (its name, the keys that identify it, the keys it requires, its converter), listed in
`registry`; `base` holds the Example and the helpers formats share; `examples` reads a source's records.
"""

from __future__ import annotations

from training.data.formats.base import DataFormat, Example, RecordSource
from training.data.formats.examples import (
    SourceExamples,
    convert_record,
    examples_from_source,
    read_examples,
    refuse_images,
    task_type,
)
from training.data.formats.registry import FORMATS, KNOWN_FORMATS, REGISTRY, REQUIRED, SIGNATURES, data_format, detect_format

__all__ = ["FORMATS", "KNOWN_FORMATS", "REGISTRY", "REQUIRED", "SIGNATURES", "DataFormat", "Example", "RecordSource",
           "SourceExamples", "convert_record", "data_format", "detect_format", "examples_from_source", "read_examples",
           "refuse_images", "task_type"]
