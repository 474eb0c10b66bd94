"""--engine llama.cpp: the model as GGUF through llama-cpp-python, several times faster than transformers on a CPU.

The GGUFs are made on first use with export.pipeline and cached in the model directory's gguf/ folder: the base
quantized to --gguf-quant (default: llamacpp.quantize.default_quant), each
adapter as an f16 LoRA GGUF applied on top of it; a retrained adapter gets a new file. Prompts are rendered and
answers decoded with the model's own Hugging Face tokenizer, exactly as with the transformers engine; only
the forward pass and sampling run in llama.cpp. Adapters are switched per request on the one context
(llama_set_adapters_lora), so routing, admission and the API are the transformers engine's.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from core.adapter import AdapterInfo
from core.model_dir import ModelDir
from export.pipeline import export_model, native_dtype
from llamacpp.quantize import CONVERTER_TYPES, default_quant, quantize_gguf
from serving.engines.base import (
    Engine,
    Generation,
    GenerationParams,
    LoadError,
    ServeSettings,
    cut_at_stop,
    fallback_template,
    trusts_remote_code,
)
from serving.engines.decoding import Detokenizer, Piece
from serving.engines.structured import numpy_processor

log = logging.getLogger("serve")
GGUF_DIR = "gguf"
ADAPTER_OUTTYPE = "f16"
SETUP_HINT = "./llm-installer setup --engine llama.cpp"


def require_llama_cpp() -> None:
    """LoadError with the install command when llama-cpp-python is missing (it is never installed silently)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise LoadError(f"--engine llama.cpp needs llama-cpp-python, which is not installed: run `{SETUP_HINT}` "
                        "once (it builds llama.cpp: about 6 minutes on 2 cores).")


def _adapter_stamp(adapter: AdapterInfo) -> str:
    """Identifies the adapter's current weights, so that a retrained ./lora gets a fresh GGUF."""
    weights = next(p for p in (adapter.path / "adapter_model.safetensors", adapter.path / "adapter_model.bin")
                   if p.is_file())
    stat = weights.stat()
    return hashlib.sha256(f"{weights.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def cached_gguf(model_dir: Path, adapter: AdapterInfo | None = None, quant: str | None = None,
                threads: int | None = None) -> Path:
    """The GGUF of the base model (adapter None, quantized to `quant`, default: base_quant) or of an adapter
    (f16 LoRA GGUF), converted once into model_dir/gguf/."""
    cache = Path(model_dir) / GGUF_DIR
    echo = lambda message: log.info("  %s", message)  # noqa: E731
    if adapter is not None:
        target = cache / f"lora-{_adapter_stamp(adapter)}-{ADAPTER_OUTTYPE}.gguf"
        if not target.is_file():
            log.info("Converting the adapter %s to a LoRA GGUF for llama.cpp (once; cached as %s).", adapter.path,
                     target)
            export_model(Path(model_dir), fmt="lora-gguf", out=target, outtype=ADAPTER_OUTTYPE, adapter=adapter.path,
                         echo=echo)
        return target
    quant = quant or base_quant(model_dir)
    target = cache / f"base-{quant}.gguf"
    if target.is_file():
        return target
    log.info("Converting the base model to a %s GGUF for llama.cpp (once; cached as %s).", quant, target)
    if quant in CONVERTER_TYPES:
        export_model(Path(model_dir), fmt="gguf", out=target, outtype=quant, no_lora=True, echo=echo)
        return target
    # The converter writes full precision; llama.cpp's quantizer makes the rest from it (then it is deleted).
    full = cache / f".base-{_full_precision(model_dir)}-{os.getpid()}.gguf"
    try:
        export_model(Path(model_dir), fmt="gguf", out=full, outtype=_full_precision(model_dir), no_lora=True,
                     echo=echo)
        quantize_gguf(full, target, quant, threads)
    finally:
        full.unlink(missing_ok=True)
    return target


def base_quant(model_dir: Path) -> str:
    """The base GGUF's type when --gguf-quant is not given (llamacpp.quantize.default_quant)."""
    return default_quant(_read_json(Path(model_dir) / "model" / "config.json"))


def _full_precision(model_dir: Path) -> str:
    """bf16 for bf16 weights (f16 could overflow them), else f16: what the quantizer starts from."""
    return "bf16" if native_dtype(ModelDir(Path(model_dir))) == "bfloat16" else "f16"


def physical_cores() -> int:
    """Physical CPU cores (llama.cpp's threads spin at their barriers: more than one per core only adds waiting)."""
    import psutil

    return psutil.cpu_count(logical=False) or max(1, (os.cpu_count() or 2) // 2)


def default_threads() -> int:
    """llama.cpp's threads when --threads is not given: $OMP_NUM_THREADS (the variable torch honours too),
    else one per physical core."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else physical_cores()


class LlamaCppEngine(Engine):
    """The model run by llama.cpp from GGUFs (the base quantized, each adapter a LoRA GGUF), on the CPU; the
    transformers tokenizer renders prompts and decodes."""

    name = "llama.cpp"
    supports_logprobs = False

    def __init__(self, llm, tokenizer, adapters: dict[str, AdapterInfo], handles: dict, context_length: int,
                 eos_ids: set[int]):
        # One llama.cpp context: generations are queued (max_concurrency 1).
        super().__init__(llm, tokenizer, "cpu", adapters, context_length, 1)
        self._handles, self.eos_ids = handles, eos_ids

    @classmethod
    def check_available(cls) -> None:
        require_llama_cpp()

    @classmethod
    def load(cls, cfg: ServeSettings, adapters: dict[str, AdapterInfo]) -> LlamaCppEngine:
        """Convert (first time) and load the GGUFs; LoadError when llama-cpp-python is missing or fails.

        --threads: llama.cpp's compute threads (default: default_threads()); --gguf-quant: the base GGUF's type
        (default: base_quant)."""
        require_llama_cpp()
        from llama_cpp import Llama
        from llama_cpp import llama_cpp as native
        from transformers import AutoTokenizer

        model_dir = Path(cfg.model_dir)
        model_path = model_dir / "model"
        template = fallback_template(model_path)
        tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trusts_remote_code(cfg))
        if not getattr(tokenizer, "chat_template", None) and template:
            tokenizer.chat_template = template
        config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
        config = config.get("text_config", config)
        context = int(config.get("max_position_embeddings") or config.get("n_positions") or 2048)
        threads = cfg.threads or default_threads()
        base = cached_gguf(model_dir, quant=cfg.gguf_quant, threads=threads)
        try:
            # The same thread count for prompts (llama-cpp-python's default there is every logical CPU: threads
            # spinning on busy cores measured 10x slower). No flash attention: 1.2x faster on the CPU, but it
            # changed SmolLM2's greedy answers (q8_0: "L'Étoile, la Cité..." instead of "The capital of France is
            # Paris.").
            llm = Llama(model_path=str(base), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                        verbose=False)
        except ValueError as exc:  # llama-cpp-python's way of saying the file did not load
            raise LoadError(f"llama.cpp cannot load {base}: {exc}") from exc
        handles = {}
        log.info("llama.cpp: %s, %d thread%s.", base.name, threads, "" if threads == 1 else "s")
        for key, adapter in adapters.items():
            path = cached_gguf(model_dir, adapter)
            handle = _quietly(native.llama_adapter_lora_init, llm._model.model, str(path).encode())
            if not handle:
                raise LoadError(f"llama.cpp cannot load the adapter GGUF {path} (made from {adapter.path}).")
            handles[key] = handle
        return cls(llm, tokenizer, adapters, handles, context, _eos_ids(model_path, tokenizer, config))

    def _activate(self, key: str | None) -> None:
        from llama_cpp import llama_cpp as native

        if key is None:
            status = native.llama_set_adapters_lora(self.model._ctx.ctx, None, 0, None)
        else:
            handles = (native.llama_adapter_lora_p_ctypes * 1)(self._handles[key])
            scales = (ctypes.c_float * 1)(1.0)  # alpha/rank is applied from the GGUF's metadata
            status = native.llama_set_adapters_lora(self.model._ctx.ctx, handles, 1, scales)
        if status:
            raise RuntimeError(f"llama_set_adapters_lora failed ({status})")

    @property
    def vocab_size(self) -> int:
        return int(self.model.n_vocab())

    def _generate(self, prompt_ids, params: GenerationParams, generation: Generation) -> Iterator[Piece]:
        from llama_cpp import llama_cpp as native

        llm = self.model
        # The seed outlives the request in llama.cpp: an unseeded request must get a random one again.
        llm.set_seed(native.LLAMA_DEFAULT_SEED if params.seed is None else params.seed % 2**32)
        processors = []
        if params.logit_bias:
            import numpy as np

            ids = np.array(list(params.logit_bias), dtype=np.int64)
            values = np.array(list(params.logit_bias.values()), dtype=np.float32)

            def bias(_input_ids, scores):
                scores[ids] += values
                return scores

            processors.append(bias)
        if params.grammar is not None:  # last, as with transformers: the same llguidance grammar, numpy masks
            processors.append(numpy_processor(params.grammar, len(prompt_ids)))
        # No reuse of the previous request's cached prompt prefix: the prompt evaluated in one batch and its tail
        # evaluated token by token round differently, and a greedy answer changed with the request before it.
        llm.reset()
        from llama_cpp import LogitsProcessorList

        tokens = llm.generate(prompt_ids, top_k=params.top_k, top_p=params.top_p, min_p=params.min_p,
                              temp=params.temperature, repeat_penalty=params.repetition_penalty,
                              frequency_penalty=params.frequency_penalty, presence_penalty=params.presence_penalty,
                              logits_processor=LogitsProcessorList(processors) if processors else None)
        detokenizer = Detokenizer(self.tokenizer, params.keep_tokens)
        state = {"count": 0, "finish": None}

        def pieces() -> Iterator[Piece]:
            for token in tokens:
                if generation.cancel.is_set():
                    return
                state["count"] += 1
                if token in self.eos_ids and not params.ignore_eos:
                    state["finish"] = "stop"
                    break
                text = detokenizer.add(token)
                if text:
                    yield Piece(text)
                if state["count"] >= params.max_tokens:
                    state["finish"] = "length"
                    break
            rest = detokenizer.flush()
            if rest:
                yield Piece(rest)

        try:
            yield from cut_at_stop(pieces(), params.stop, generation)
        finally:
            tokens.close()
        generation.completion_tokens = state["count"]
        if generation.finish_reason is None:
            generation.finish_reason = "cancelled" if generation.cancel.is_set() else state["finish"] or "stop"


def _quietly(function, *args):
    """Call into llama.cpp with its log silenced: loading a LoRA on a repacked (q4_0) base logs an error-level line
    per tensor ("cannot use buft 'CPU_REPACK', fallback to CPU") that is only a note; a real failure returns NULL."""
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return function(*args)
    finally:
        logger.setLevel(level)


def _eos_ids(model_path: Path, tokenizer, config: dict) -> set[int]:
    ids: set[int] = set()
    for source in (config, _read_json(model_path / "generation_config.json")):
        value = source.get("eos_token_id")
        ids.update(value if isinstance(value, list) else [value] if value is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
