"""The dataset formats, one module each, listed once: detection, required keys, the --dataset-format choices
and the converters all come from REGISTRY.

Adding a format: write training/data/formats/NAME.py declaring `FORMAT = DataFormat(...)` (see base.DataFormat),
import it here and add its one line to REGISTRY where its detection belongs.
"""

from __future__ import annotations

from training.data.formats import alpaca, completion, kto, openai, preference, qa, sharegpt, text, vision
from training.data.formats.base import DataFormat

# In detection order: a record is the first format one of whose signatures' keys it has (so the more specific
# signatures come first). The number is the format's place in the --dataset-format choices (and in the
# "known formats" message), which keep the order users have always seen.
# Ambiguous shapes are resolved by this order: a `label`/`kto_tag` beside a conversation or a prompt/completion
# pair makes KTO data (kto before openai, sharegpt and completion); `chosen`/`rejected` make a preference pair
# whatever else the record holds (its prompt may be in `conversations` or `messages`).
REGISTRY: tuple[tuple[DataFormat, int], ...] = (
    (kto.FORMAT, 9),
    (preference.FORMAT, 8),
    (openai.FORMAT, 3),
    (sharegpt.FORMAT, 2),
    (vision.FORMAT, 7),
    (alpaca.FORMAT, 1),
    (qa.FORMAT, 4),
    (completion.FORMAT, 5),
    (text.FORMAT, 6),
)

BY_NAME: dict[str, DataFormat] = {fmt.name: fmt for fmt, _ in REGISTRY}
FORMATS: tuple[str, ...] = tuple(fmt.name for fmt, _ in sorted(REGISTRY, key=lambda entry: entry[1]))
KNOWN_FORMATS = FORMATS
# (format, keys that must all be present) in detection order.
SIGNATURES: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (fmt.name, keys) for fmt, _ in REGISTRY for keys in fmt.signatures)
REQUIRED: dict[str, tuple[str, ...]] = {name: fmt.required for name, fmt in BY_NAME.items()}


def data_format(name: str) -> DataFormat:
    """The registered format called `name` (KeyError if there is none)."""
    return BY_NAME[name]


def detect_format(record: dict) -> str | None:
    """The format a record's keys say it is in (None if unknown)."""
    keys = set(record)
    for name, needed in SIGNATURES:
        if keys.issuperset(needed):
            return name
    return None
