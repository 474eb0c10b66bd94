"""Loading the model (with every served adapter) and generating with transformers' own machinery:
`generate` in a worker thread, tokens handed back through a streamer and turned into text here."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from core.adapter import AdapterInfo
from core.system import resolve_device
from handlers import is_multimodal_dir
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
from serving.engines.batching import ContinuousBatcher, batchable
from serving.engines.decoding import (
    Detokenizer,
    LogprobRecorder,
    Piece,
    TokenLogprob,
    TokenStreamer,
    bias_processor,
    penalty_processor,
    prompt_logprobs,
)
from serving.engines.gate import SHARE_EVERY
from serving.engines.structured import torch_processor

log = logging.getLogger("serve")
BATCH_SLOTS = 32  # requests admitted at once when continuous batching is on (the rest queue)


def _placement(device: str, dtype: str, quantization: str):
    import torch

    try:
        device = resolve_device(device)
    except ValueError as exc:
        raise LoadError(str(exc)) from exc
    if quantization != "none" and device != "cuda":
        raise LoadError(f"--quantization {quantization} needs a CUDA GPU (bitsandbytes); this machine serves on the "
                        f"{device.upper()}.")
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else ("bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported()
                                                   else "float16")
    return device, getattr(torch, dtype)


class TransformersEngine(Engine):
    """The model run by transformers: one `generate` per request in a worker thread, or the continuous batcher's
    shared forward passes; PEFT switches the adapters."""

    name = "transformers"
    supports_embeddings = True

    def __init__(self, model, tokenizer, device: str, adapters: dict[str, AdapterInfo], context_length: int,
                 max_concurrency: int = 1):
        super().__init__(model, tokenizer, device, adapters, context_length, max_concurrency)
        self._batcher: ContinuousBatcher | None = None  # when continuous batching is on
        self._seed_lock = threading.Lock()

    @classmethod
    def load(cls, cfg: ServeSettings, adapters: dict[str, AdapterInfo]) -> TransformersEngine:
        """Load weights (quantized/offloaded as --quantization/--cpu-offload ask), then attach every adapter
        (key -> adapter) to them. --threads: torch's CPU threads (default: torch's own choice). --batching on/auto
        (auto: on CUDA): concurrent requests share forward passes (serving/engines/batching.py); --max-concurrency
        0 is 32 then, else 1."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_path = Path(cfg.model_dir) / "model"
        trust_remote_code, quantization, cpu_offload = trusts_remote_code(cfg), cfg.quantization, cfg.cpu_offload
        template = fallback_template(model_path)
        device, torch_dtype = _placement(cfg.device, cfg.dtype, quantization)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        batched = cfg.batching == "on" or (cfg.batching == "auto" and device == "cuda" and not cpu_offload)
        kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
        if quantization != "none":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = (BitsAndBytesConfig(load_in_8bit=True) if quantization == "8bit" else
                                             BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                                bnb_4bit_compute_dtype=torch_dtype))
        if cpu_offload or quantization != "none":
            kwargs["device_map"] = "auto" if cpu_offload else {"": 0}
        processor = None
        try:
            if is_multimodal_dir(model_path):
                from transformers import AutoModelForImageTextToText, AutoProcessor

                processor = AutoProcessor.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
                tokenizer = processor.tokenizer
                model = AutoModelForImageTextToText.from_pretrained(str(model_path), **kwargs)
            else:
                tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
                model = AutoModelForCausalLM.from_pretrained(str(model_path), **kwargs)
        except (OSError, ValueError) as exc:
            raise LoadError(f"Cannot load the model from {model_path}: {str(exc).splitlines()[0]}") from exc
        if "device_map" not in kwargs:
            model.to(device)
        model = _attach_adapters(model, adapters)
        if not getattr(tokenizer, "chat_template", None) and template:
            tokenizer.chat_template = template
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        config = model.config.get_text_config()
        context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 2048
        if batched and processor is not None:  # image inputs go through generate; transformers' manager takes ids
            log.warning("Continuous batching is not used for multimodal models.")
            batched = False
        max_concurrency = cfg.max_concurrency or (BATCH_SLOTS if batched else 1)
        if device == "cpu" and max_concurrency > 1 and not batched:
            log.warning("--max-concurrency %d on the CPU: parallel generations compete for the cores and total "
                        "throughput drops (about 4x with 8 on 2 cores); 1, which queues requests, is faster here.",
                        max_concurrency)
        engine = cls(model, tokenizer, device, adapters, int(context), max_concurrency)
        engine.processor = processor
        if batched:
            engine._batcher = ContinuousBatcher(model, _eos_ids(model, tokenizer), tokenizer.pad_token_id)
            log.info("Continuous batching: up to %d requests share each forward pass.", max_concurrency)
        return engine

    def _activate(self, key: str | None) -> None:
        if not self.adapters:
            return
        if key is None:
            self.model.base_model.disable_adapter_layers()
        else:
            self.model.base_model.enable_adapter_layers()
            self.model.set_adapter(key)

    def close(self) -> None:
        """Stop the continuous batcher's thread; the engine serves no more requests."""
        if self._batcher is not None:
            self._batcher.stop()

    @property
    def vocab_size(self) -> int:
        return self.model.config.get_text_config().vocab_size

    # --- forward passes that are not generations ---------------------------------------------------
    def _score(self, prompt_ids: list[int], top: int) -> list:
        import torch

        with torch.inference_mode():
            inputs = torch.tensor([list(prompt_ids)], device=self._input_device)
            rows = torch.log_softmax(self.model(input_ids=inputs).logits[0].float(), dim=-1)
        return prompt_logprobs(self.tokenizer, list(prompt_ids), rows, top)

    def _embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """The mean of the last layer's hidden states over the input's tokens (mean pooling), one input at a time
        (no padding to get wrong)."""
        import torch

        vectors = []
        with torch.inference_mode():
            for ids in inputs:
                tensor = torch.tensor([ids], device=self._input_device)
                hidden = self.model(input_ids=tensor, output_hidden_states=True).hidden_states[-1][0]
                vectors.append(hidden.float().mean(dim=0).tolist())
        return vectors

    @property
    def _input_device(self) -> str:
        return self.device if self.device != "auto" else "cpu"

    # --- generation --------------------------------------------------------------------------
    def _generate(self, prompt_ids, params: GenerationParams, generation: Generation) -> Iterator[Piece]:
        if self._batcher is not None and batchable(params) and not getattr(prompt_ids, "inputs", None):
            yield from self._generate_batched(prompt_ids, params, generation)
            return
        yield from self._generate_alone(prompt_ids, params, generation)

    def _generate_batched(self, prompt_ids, params: GenerationParams, generation: Generation) -> Iterator[Piece]:
        """The request's tokens from the continuous batcher, as text pieces (what _generate_alone gives)."""
        tokens = self._batcher.tokens(prompt_ids, params, generation.cancel)
        state = {"count": 0, "last": None}

        def pieces() -> Iterator[Piece]:
            detokenizer = Detokenizer(self.tokenizer, params.keep_tokens)
            for token in tokens:
                state["count"], state["last"] = state["count"] + 1, token
                text = detokenizer.add(token)
                if text:
                    yield Piece(text)
            rest = detokenizer.flush()
            if rest:
                yield Piece(rest)

        finished = False
        try:
            yield from cut_at_stop(pieces(), params.stop, generation)
            finished = True
        finally:
            if not finished:  # the consumer left early (client gone, Ctrl+C)
                generation.cancel.set()
            tokens.close()
        generation.completion_tokens = state["count"]
        _finish(generation, params, state["last"] in _eos_ids(self.model, self.tokenizer))

    def _generate_alone(self, prompt_ids, params: GenerationParams, generation: Generation) -> Iterator[Piece]:
        """One `generate` call for this request, in a worker thread."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            """Stops on cancel; every SHARE_EVERY tokens lets a waiting request run first (gate.py: fairness)."""

            steps = 0

            def __call__(self, input_ids, scores, **kwargs):
                self.steps += 1
                if generation.turn is not None and self.steps % SHARE_EVERY == 0:
                    generation.turn.share()
                return generation.cancel.is_set()

        recorder = LogprobRecorder(self.tokenizer, params.top_logprobs) if params.logprobs else None
        processors = [recorder.processor()] if recorder else []
        if params.presence_penalty or params.frequency_penalty:
            processors.append(penalty_processor(len(prompt_ids), params.presence_penalty, params.frequency_penalty))
        if params.logit_bias:
            processors.append(bias_processor(params.logit_bias))
        if params.grammar is not None:  # last: nothing after it may make a token the grammar forbids likely again
            processors.append(torch_processor(params.grammar, len(prompt_ids)))
        streamer = TokenStreamer(recorder)
        inputs = torch.tensor([prompt_ids], device=self.device if self.device != "auto" else "cpu")
        sampling = params.temperature > 0
        kwargs = dict(input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=params.max_tokens,
                      do_sample=sampling, streamer=streamer, stopping_criteria=StoppingCriteriaList([Cancelled()]),
                      logits_processor=LogitsProcessorList(processors), pad_token_id=self.tokenizer.pad_token_id,
                      return_dict_in_generate=True)
        for name, value in getattr(prompt_ids, "inputs", {}).items():  # a multimodal prompt's image tensors
            kwargs[name] = value.to(inputs.device)
        if params.ignore_eos:
            kwargs["min_new_tokens"] = params.max_tokens
        if sampling:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
                          min_p=params.min_p or None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = params.repetition_penalty
        result: dict = {}

        def work():
            try:
                with torch.inference_mode():
                    if params.seed is not None:
                        with self._seed_lock:
                            torch.manual_seed(params.seed)
                    result["output"] = self.model.generate(**kwargs)
            except Exception as exc:  # reported to the request, never lost in the thread
                result["error"] = exc
            finally:
                streamer.end()

        worker = threading.Thread(target=work, name="generate", daemon=True)
        worker.start()
        finished = False
        try:
            yield from cut_at_stop(_pieces(streamer, Detokenizer(self.tokenizer, params.keep_tokens),
                                           params.special_logprobs), params.stop, generation)
            finished = True
        finally:
            if not finished:  # the consumer left early (client gone, Ctrl+C): stop generating
                generation.cancel.set()
            worker.join()
        if "error" in result:
            raise result["error"]
        sequence = result["output"].sequences[0]
        generated = sequence[len(prompt_ids):]
        generation.completion_tokens = int(generated.numel())
        _finish(generation, params, bool(generated.numel()) and int(generated[-1]) in _eos_ids(self.model,
                                                                                              self.tokenizer))


def _finish(generation: Generation, params: GenerationParams, ended_with_eos: bool) -> None:
    """finish_reason once generation ended, unless a stop string already set it."""
    if generation.finish_reason is None and generation.cancel.is_set():
        generation.finish_reason = "cancelled"  # the client left; nobody reads this answer
    if generation.finish_reason is None:
        ended = ended_with_eos or generation.completion_tokens < params.max_tokens
        generation.finish_reason = "stop" if ended else "length"


def _attach_adapters(model, adapters: dict[str, AdapterInfo]):
    """The model with every adapter loaded under its key (one copy of the base weights, PEFT switches)."""
    if not adapters:
        return model
    from peft import PeftModel

    keys = iter(adapters)
    first = next(keys)
    model = PeftModel.from_pretrained(model, str(adapters[first].path), adapter_name=first)
    for key in keys:
        model.load_adapter(str(adapters[key].path), adapter_name=key)
    model.set_adapter(first)
    return model


def _pieces(streamer: TokenStreamer, detokenizer: Detokenizer, special: bool = False) -> Iterator[Piece]:
    pending: list[TokenLogprob] = []
    for token_id, entry in streamer:
        # End-of-turn tokens are not part of a chat answer; legacy completions (`special`) list them.
        if entry is not None and (special or token_id not in detokenizer.skip):
            pending.append(entry)
        text = detokenizer.add(token_id)
        if text:
            yield Piece(text, pending)
            pending = []
    rest = detokenizer.flush()
    if rest or pending:
        yield Piece(rest, pending)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id if model.generation_config else None
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids

