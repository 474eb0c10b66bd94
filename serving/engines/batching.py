"""Continuous batching on the GPU: concurrent generations share each forward pass through transformers'
continuous-batching manager (`init_continuous_batching`), instead of one `generate` per request.

The manager samples for every request with one sampler, so it takes the requests it can serve exactly: greedy
(per-request top_k 1) or plain temperature/top-p sampling without a seed, and without log-probabilities,
penalties, top_k/min_p/repetition_penalty, logit bias or a grammar, whose processors are per `generate` call. The others still run
through `generate` beside it. The adapter gate (serving/engines/gate.py) only switches adapters when nothing is
generating, so batched requests always share one adapter; CUDA graphs stay off because they would replay the
adapter state they were captured with.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

log = logging.getLogger("serve")
POLL_SECONDS = 0.1  # how often a waiting request looks at its cancel flag
GPU_MEMORY_SHARE = 0.5
CPU_PAGES = 64


def batchable(params) -> bool:
    """Whether continuous batching reproduces what `generate` would do for these GenerationParams."""
    return not (params.logprobs or params.presence_penalty or params.frequency_penalty or params.logit_bias
                or params.grammar is not None or params.seed is not None or params.top_k or params.min_p
                or params.repetition_penalty != 1.0)


def _sampling(params, vocab_size: int) -> dict:
    """Per-request sampler settings: greedy is top_k 1 at temperature 1; sampling keeps every token to top-p."""
    if params.temperature == 0:
        return {"temperature": 1.0, "top_k": 1, "top_p": 1.0}
    return {"temperature": float(params.temperature), "top_k": vocab_size, "top_p": float(params.top_p)}


class ContinuousBatcher:
    """One continuous-batching manager for the model, and a router that hands each request its own outputs."""

    def __init__(self, model, eos_ids: set[int], pad_token_id: int | None):
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        self.vocab_size = model.config.get_text_config().vocab_size
        # temperature/top_k/top_p away from their neutral values so that the manager builds the per-request
        # processors; every request then sets all three (_sampling).
        config = GenerationConfig(do_sample=True, temperature=0.5, top_k=1, top_p=0.5, max_new_tokens=256,
                                  eos_token_id=sorted(eos_ids), pad_token_id=pad_token_id)
        # The KV cache is sized from free memory: on a GPU half of it (requests batching cannot serve still need
        # room in generate); on the CPU (batching forced on) a fixed 64 pages of 256 tokens instead of most of the RAM.
        sizing = {"num_blocks": CPU_PAGES} if model.device.type == "cpu" else {"max_memory_percent": GPU_MEMORY_SHARE}
        batching = ContinuousBatchingConfig(per_request_processors=True, use_cuda_graph=False,
                                            auto_switch_to_flash=False, **sizing)
        self._manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=batching)
        self._manager.start()
        self._queues: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._router = threading.Thread(target=self._route, name="batch-router", daemon=True)
        self._router.start()
        # The manager allocates its cache on the first request (seconds): pay it now, not on a user's request.
        warm_up = SimpleNamespace(max_tokens=1, temperature=0, top_p=1.0, ignore_eos=True)
        for _ in self.tokens([pad_token_id or 0], warm_up, threading.Event()):
            pass

    def _route(self) -> None:
        while not self._stopped.is_set():
            result = self._manager.get_result(timeout=POLL_SECONDS)
            if result is None:
                if not self._manager.is_running():
                    break
                continue
            with self._lock:
                target = self._queues.get(result.request_id)
            if target is not None:
                target.put(result)
        with self._lock:  # the manager stopped or crashed: wake every waiting request
            for target in self._queues.values():
                target.put(None)

    def tokens(self, prompt_ids: list[int], params, cancel: threading.Event) -> Iterator[int]:
        """Token ids as the manager generates them for one request; stops (and frees its slot) when `cancel` is
        set or the consumer leaves. Ends at end-of-sequence (included, as `generate` does) or max_tokens."""
        request_id = uuid.uuid4().hex
        outputs: queue.Queue = queue.Queue()
        with self._lock:
            self._queues[request_id] = outputs
        finished, sent = False, 0
        try:
            self._manager.add_request(list(prompt_ids), request_id=request_id, max_new_tokens=params.max_tokens,
                                      streaming=True, eos_token_id=-1 if params.ignore_eos else None,
                                      **_sampling(params, self.vocab_size))
            while not cancel.is_set():
                try:
                    result = outputs.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if result is None:
                    raise RuntimeError("continuous batching stopped")
                if result.error:
                    raise RuntimeError(f"continuous batching failed: {result.error}")
                new = result.generated_tokens[sent:]  # each output carries every token so far
                sent += len(new)
                yield from new
                if result.is_finished():
                    finished = True
                    return
        finally:
            if not finished:
                self._manager.cancel_request(request_id)
            with self._lock:
                self._queues.pop(request_id, None)

    def stop(self) -> None:
        self._stopped.set()
        self._manager.stop(block=True, timeout=30)
