"""The general-knowledge reference: what the base model does outside the user's data, for any model, offline.

Self-distillation: the base model's own greedy answers (at most MAX_NEW_TOKENS tokens) to the general prompts
shipped in prompts.json (facts, arithmetic, short code, writing, advice, definitions, translation, reasoning),
rendered through the model's chat template like the training data ("chat"), or as plain text for a run that
trains on text ("plain"). The loss of a model on these answers (nats per answer token, the same cross-entropy as
training's) is low for the base, which chose them, and rises as tuning pulls the model away from what it did
outside the user's data; the base's loss is the zero point. No download, any chat template.

Two disjoint prompt sets: "watch" measures forgetting, "replay" is only ever trained on (--replay), so replay
never trains on what measures forgetting. A reference is cached in the model directory
(`.cache/general_reference.json`), keyed by everything that changes it: the prompts, the rendering and chat
template, the model's files (names, sizes, modification times), the generation settings, and the weights'
dtype and device type (the base loss depends on them). A changed key builds it again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from training.data.formats import Example
from training.data.tokenize import IGNORE_INDEX, Tokenized
from training.evaluate import EvalItem, EvalSet, answer_loss, greedy_ids, prepare

log = logging.getLogger("train")
PROMPTS_FILE = Path(__file__).with_name("prompts.json")
CACHE_FILE = Path(".cache") / "general_reference.json"
FORMAT_VERSION = 1
# Cost decides the sizes: the watch set is evaluated at every evaluation of every run, so 16 prompts with answers of
# at most 32 tokens (about 1,000 tokens with the chat template's prompt: one forward pass); the replay pool is only
# generated for --replay and trained on, so its answers may run longer.
MAX_NEW_TOKENS = 32
REPLAY_MAX_NEW_TOKENS = 64
GENERATION_BATCH = 32  # prompts generated together (the whole watch set in one batch)
CACHE_ENTRIES = 4  # references kept in the cache file (another device or dtype keeps its own)
SOURCE = "general reference"
PLACEHOLDER = "."  # the answer a prompt is tokenized with, to take the prompt's tokens exactly as training does
RENDERINGS = ("chat", "plain")


def load_prompts() -> dict[str, list[str]]:
    """{"watch": [...], "replay": [...]}: the shipped general prompts."""
    data = json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))
    return {"watch": list(data["watch"]), "replay": list(data["replay"])}


@dataclass
class ReferenceItem:
    """A general prompt and the base model's greedy answer, as token ids."""

    prompt: str
    prompt_ids: list[int]
    answer_ids: list[int]  # up to and including the stop token (or MAX_NEW_TOKENS ids when none came)

    def tokenized(self, max_length: int | None = None) -> Tokenized:
        """An ordinary SFT example: loss on the answer's tokens only (cut at `max_length` when given)."""
        ids = self.prompt_ids + self.answer_ids
        labels = [IGNORE_INDEX] * len(self.prompt_ids) + list(self.answer_ids)
        limit = max_length or len(ids)
        return Tokenized(ids[:limit], labels[:limit], len(ids) > limit, dropped=max(0, len(ids) - limit))

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "prompt_ids": self.prompt_ids, "answer_ids": self.answer_ids}


@dataclass
class GeneralReference:
    """The watch set (and, for --replay, the replay pool) with the base model's loss on the watch set."""

    key: str
    rendering: str  # "chat" (the chat template) or "plain" (prompt text, then the answer)
    watch: list[ReferenceItem]
    base_loss: float  # the base model's mean loss per answer token on the watch set: forgetting's zero point
    replay: list[ReferenceItem] = field(default_factory=list)
    seconds: float = 0.0  # building it took (generation and the base loss); 0 when it was read
    origin: str = "built"  # "built", "cache" or "checkpoint"

    @property
    def tokens(self) -> int:
        """Answer tokens of the watch set (what its loss is a mean over)."""
        return sum(len(item.answer_ids) for item in self.watch)

    def watch_examples(self) -> list[Tokenized]:
        return [item.tokenized() for item in self.watch]

    def replay_examples(self, max_length: int) -> list[Tokenized]:
        """The replay pool as training examples, cut at the run's sequence length (an answer cut off is dropped)."""
        examples = [item.tokenized(max_length) for item in self.replay]
        return [example for example in examples if example.trainable > 1]

    def as_dict(self) -> dict:
        """The JSON form (cache entries and checkpoints)."""
        return {"version": FORMAT_VERSION, "key": self.key, "rendering": self.rendering, "base_loss": self.base_loss,
                "max_new_tokens": MAX_NEW_TOKENS, "seconds": round(self.seconds, 3),
                "watch": [item.as_dict() for item in self.watch], "replay": [item.as_dict() for item in self.replay]}

    @classmethod
    def from_dict(cls, data: dict, origin: str) -> GeneralReference:
        def items(name: str) -> list[ReferenceItem]:
            return [ReferenceItem(i["prompt"], list(i["prompt_ids"]), list(i["answer_ids"])) for i in data.get(name, [])]

        return cls(data["key"], data["rendering"], items("watch"), float(data["base_loss"]), items("replay"),
                   float(data.get("seconds", 0.0)), origin)


def model_identity(model_path: Path) -> list:
    """What identifies the installed weights and tokenizer without reading them: each top-level file's name,
    size and modification time."""
    entries = []
    for path in sorted(Path(model_path).iterdir()):
        if path.is_file():
            stat = path.stat()
            entries.append([path.name, stat.st_size, stat.st_mtime_ns])
    return entries


def reference_key(model_path: Path, tokenizer, rendering: str, dtype: str, device_type: str,
                  prompts: dict[str, list[str]] | None = None) -> str:
    """The cache key: a hash of everything a reference depends on."""
    parts = {"version": FORMAT_VERSION, "prompts": prompts or load_prompts(), "rendering": rendering,
             "chat_template": getattr(tokenizer, "chat_template", None) if rendering == "chat" else None,
             "model": model_identity(model_path), "max_new_tokens": [MAX_NEW_TOKENS, REPLAY_MAX_NEW_TOKENS],
             "batch": GENERATION_BATCH,
             "dtype": dtype, "device": device_type}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def prompt_ids(tokenizer, prompt: str, rendering: str) -> list[int]:
    """The prompt's token ids exactly as training tokenizes what comes before an answer (the chat template's
    generation prompt included; for plain text, the prompt and a newline)."""
    if rendering == "chat":
        example = Example("qa", SOURCE, 0, messages=[{"role": "user", "content": prompt},
                                                     {"role": "assistant", "content": PLACEHOLDER}])
    else:
        example = Example("completion", SOURCE, 0, prompt=prompt + "\n", completion=PLACEHOLDER)
    [item] = prepare(tokenizer, [example], 1 << 30).items
    return list(item.prompt_ids)


def generate_items(model, tokenizer, prompts: list[str], rendering: str, device,
                   max_new_tokens: int = MAX_NEW_TOKENS, logprobs: list | None = None) -> list[ReferenceItem]:
    """The model's greedy answers to `prompts`, as reference items (each answer token's log-probability appended to
    `logprobs` when given)."""
    ids = [prompt_ids(tokenizer, prompt, rendering) for prompt in prompts]
    answers = greedy_ids(model, tokenizer, ids, max_new_tokens, GENERATION_BATCH, device, logprobs)
    return [ReferenceItem(p, i, a) for p, i, a in zip(prompts, ids, answers, strict=True)]


def reference_loss(model, examples: list[Tokenized], pad_id: int, device) -> float:
    """The model's mean loss per answer token on reference examples (packed, no gradients)."""
    total, count = answer_loss(model, EvalSet([EvalItem(t, None, None) for t in examples]), pad_id, device)
    return total / max(1, count)


def build_reference(model, tokenizer, key: str, rendering: str, device, with_replay: bool,
                    known: GeneralReference | None = None) -> GeneralReference:
    """Generate the reference with `model` (the base: no adapter, or inside `disable_adapter()`) and measure its
    base loss; a `known` reference of the same key lends its watch set (only the replay pool is then generated)."""
    prompts = load_prompts()
    started = time.monotonic()
    training = model.training
    model.eval()
    try:
        if known is not None:
            watch, base_loss = known.watch, known.base_loss
        else:  # the base loss from the generation's own logits: the same predictions as a forward pass over them
            logprobs: list[list[float]] = []
            watch = generate_items(model, tokenizer, prompts["watch"], rendering, device, logprobs=logprobs)
            tokens = [value for answer in logprobs for value in answer]
            base_loss = -sum(tokens) / max(1, len(tokens))
        replay = generate_items(model, tokenizer, prompts["replay"], rendering, device,
                                REPLAY_MAX_NEW_TOKENS) if with_replay else []
    finally:
        model.train(training)
    return GeneralReference(key, rendering, watch, base_loss, replay, time.monotonic() - started, "built")


def read_cache(workdir: Path) -> list[dict]:
    """The cached references of this model directory (newest first); [] when none can be read."""
    try:
        data = json.loads((Path(workdir) / CACHE_FILE).read_text(encoding="utf-8"))
        entries = data.get("entries", []) if isinstance(data, dict) else []
        return [e for e in entries if isinstance(e, dict) and e.get("version") == FORMAT_VERSION and "key" in e]
    except (OSError, ValueError):
        return []


def write_cache(workdir: Path, reference: GeneralReference) -> Path | None:
    """Keep `reference` first in the model directory's cache (atomically); None when the directory is not
    writable (the run goes on, and builds it again next time)."""
    path = Path(workdir) / CACHE_FILE
    entries = [reference.as_dict() | {"created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}]
    entries += [e for e in read_cache(workdir) if e["key"] != reference.key][:CACHE_ENTRIES - 1]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".general_reference.", dir=path.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump({"entries": entries}, out)
        os.replace(temporary, path)
        return path
    except OSError as exc:
        log.warning("Could not cache the general reference in %s (%s); it is built again next time.", path,
                    exc.strerror or exc)
        return None


def general_reference(model, tokenizer, model_path: Path, workdir: Path, device, rendering: str,
                      with_replay: bool = False, save: bool = True) -> GeneralReference:
    """The reference for this model, from the model directory's cache when its key matches, else built with
    `model` (which must be the base model as it is then) and cached (`save`)."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    device_type = getattr(device, "type", str(device).split(":")[0])
    key = reference_key(model_path, tokenizer, rendering, dtype, device_type)
    cached = next((GeneralReference.from_dict(e, "cache") for e in read_cache(workdir) if e["key"] == key), None)
    if cached is not None and (cached.replay or not with_replay):
        return cached
    reference = build_reference(model, tokenizer, key, rendering, device, with_replay, cached)
    if save:
        write_cache(workdir, reference)
    return reference
