"""What runs inside one `generate` call besides the model: OpenAI's penalties and logit bias as logits
processors, log-probability capture, and a streamer that hands token ids (with their log-probabilities)
to the request thread, which turns them into text itself."""

from __future__ import annotations

import math
import queue
from dataclasses import dataclass, field


@dataclass
class TokenLogprob:
    """One generated token as OpenAI's `logprobs.content[]` entry describes it."""

    token: str
    logprob: float | None  # None: the first token of a scored prompt (nothing comes before it)
    top: list[tuple[str, float]] = field(default_factory=list)

    def as_chat(self) -> dict:
        def entry(token: str, logprob: float) -> dict:
            return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8", "replace"))}

        return {**entry(self.token, self.logprob), "top_logprobs": [entry(t, lp) for t, lp in self.top]}


@dataclass
class Piece:
    """A stretch of generated text and the tokens it came from (log-probabilities only when asked)."""

    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


def _processor_base():
    from transformers import LogitsProcessor

    return LogitsProcessor


def penalty_processor(prompt_length: int, presence: float, frequency: float):
    """OpenAI's presence/frequency penalties over the tokens generated so far (not the prompt), as vLLM does."""
    import torch

    class Penalties(_processor_base()):
        def __call__(self, input_ids, scores):
            generated = input_ids[:, prompt_length:]
            if generated.shape[1] == 0:
                return scores
            counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
            return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)

    return Penalties()


def bias_processor(bias: dict[int, float]):
    """OpenAI's logit_bias: added to the logits of the listed token ids."""
    import torch

    ids = list(bias)

    class LogitBias(_processor_base()):
        def __call__(self, input_ids, scores):
            index = torch.tensor(ids, device=scores.device)
            values = torch.tensor([bias[i] for i in ids], device=scores.device, dtype=scores.dtype)
            return scores.index_add(1, index, values.expand(scores.shape[0], -1))

    return LogitBias()


class LogprobRecorder:
    """A logits processor placed before sampling's warpers: keeps the step's log-softmax so that the
    sampled token's log-probability (and the top-k alternatives) can be read once the token is known."""

    def __init__(self, tokenizer, top: int):
        self.tokenizer, self.top = tokenizer, top
        self._last = None

    def processor(self):
        import torch

        recorder = self

        class Record(_processor_base()):
            def __call__(self, input_ids, scores):
                recorder._last = torch.log_softmax(scores[0].float(), dim=-1)
                return scores

        return Record()

    def take(self, token_id: int) -> TokenLogprob | None:
        """The entry of the token sampled from the last recorded step."""
        row, self._last = self._last, None
        if row is None:
            return None
        top = []
        if self.top:
            values, indices = row.topk(self.top)
            top = [(self.tokenizer.decode([int(i)]), _finite(float(v))) for v, i in zip(values, indices, strict=True)]
        return TokenLogprob(self.tokenizer.decode([token_id]), _finite(float(row[token_id])), top)


def prompt_logprobs(tokenizer, ids: list[int], rows, top: int) -> list[TokenLogprob]:
    """Entries of a scored prompt: token i's log-probability is read from the row of position i - 1 (`rows`: the
    log-softmax of every position's logits)."""
    entries = [TokenLogprob(tokenizer.decode([ids[0]]), None)]
    for position in range(1, len(ids)):
        row = rows[position - 1]
        alternatives = []
        if top:
            values, indices = row.topk(top)
            alternatives = [(tokenizer.decode([int(i)]), _finite(float(v))) for v, i in zip(values, indices,
                                                                                               strict=True)]
        entries.append(TokenLogprob(tokenizer.decode([ids[position]]), _finite(float(row[ids[position]])),
                                    alternatives))
    return entries


def _finite(value: float) -> float:
    # JSON has no -inf; OpenAI reports impossible tokens as -9999.0.
    return value if math.isfinite(value) else -9999.0


class TokenStreamer:
    """transformers streamer: each generated token id (with its log-probability entry) goes to a queue."""

    END = object()

    def __init__(self, recorder: LogprobRecorder | None, timeout: float = 600):
        self.recorder, self.timeout = recorder, timeout
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt
            self._prompt_seen = True
            return
        for token_id in value.reshape(-1).tolist():
            entry = self.recorder.take(token_id) if self.recorder else None
            self.queue.put((token_id, entry))

    def end(self) -> None:
        self.queue.put(self.END)

    def __iter__(self):
        while (item := self.queue.get(timeout=self.timeout)) is not self.END:
            yield item


class Detokenizer:
    """Token ids -> text pieces, holding back a piece while it ends inside a multi-byte character.

    Special tokens are dropped except `keep` (tool-call markers such as Mistral's [TOOL_CALLS], which the
    tool-call parser must see)."""

    def __init__(self, tokenizer, keep: set[int] = frozenset()):
        self.tokenizer = tokenizer
        self.skip = set(tokenizer.all_special_ids) - set(keep)
        self.ids: list[int] = []
        self.text = ""

    def add(self, token_id: int) -> str:
        if token_id in self.skip:
            return ""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        if text.endswith("\ufffd"):
            return ""
        piece, self.text = text[len(self.text):], text
        return piece

    def flush(self) -> str:
        """What is still held back when generation ends (an unfinished character stays as U+FFFD)."""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=False) if self.ids else ""
        piece, self.text = text[len(self.text):], text
        return piece
