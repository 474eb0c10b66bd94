#!/usr/bin/env python3
"""The GPU check's setup steps, each run as its own process by bench/gpu_check.py:

    build.py env   --result R.json                       versions, the GPU, its measured bf16 peak
    build.py data  --work DIR --examples N --result R.json  tokenizer (DIR/tokenizer) and data (DIR/data.json)
    build.py model --work DIR --shape NAME --result R.json  DIR/NAME/model: config, tokenizer, random bf16 weights

A model directory is laid out as an install's (`DIR/NAME/model/config.json`), so `train_lora.py --model-path` and
`python -m serving --model-dir DIR/NAME` read it as they read an installed model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from gpu import data, model  # noqa: E402

PEAK_SIZE = 8192


def measure_peak(size: int = PEAK_SIZE, repeats: int = 20, rounds: int = 3) -> dict:
    """bf16 FLOP/s of a size^3 matrix product on the GPU: the best of `rounds` means over `repeats` products,
    timed with CUDA events after warm-up."""
    import torch

    if not torch.cuda.is_available():  # --cpu-smoke: a small float32 product, timed by the clock
        a = torch.randn(512, 512)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ a
        seconds = (time.perf_counter() - started) / repeats
        return {"size": 512, "seconds_per_product": seconds, "flops_per_second": model.matmul_peak_flops(512, seconds)}
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        torch.matmul(a, b, out=out)
    torch.cuda.synchronize()
    best = None
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            torch.matmul(a, b, out=out)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1000 / repeats
        best = seconds if best is None else min(best, seconds)
    del a, b, out
    torch.cuda.empty_cache()
    return {"size": size, "seconds_per_product": best, "flops_per_second": model.matmul_peak_flops(size, best)}


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    import platform

    import torch

    cuda = torch.cuda.is_available()
    memory = torch.cuda.get_device_properties(0).total_memory / 1024**3 if cuda else 0.0
    return {"gpu": torch.cuda.get_device_name(0) if cuda else "none (CPU smoke run)", "gpu_memory_gib": round(memory, 1),
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            **{name: _version(name) for name in ("transformers", "peft", "accelerate", "triton", "tokenizers",
                                                   "safetensors")},
            "peak": measure_peak()}


def build_data(work: Path, examples: int, seed: int = 0) -> dict:
    tokenizer = data.build_tokenizer(work / "tokenizer", seed)
    records = data.make_records(examples, seed)
    data.write_records(records, work / "data.json")
    lengths = [len(data.chat_ids(tokenizer, r)[1]) for r in records]
    return {"data": str(work / "data.json"), "tokenizer": str(work / "tokenizer"), "tokens": data.length_summary(lengths),
            "special": {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}}


def build_model(work: Path, shape: str, device: str, **overrides) -> dict:
    """DIR/shape/model with the shape's config (with `overrides`: scaled down), the tokenizer of `build_data` and
    random weights generated on `device`."""
    from transformers import AutoTokenizer

    target = work / shape / "model"
    if target.exists():
        shutil.rmtree(target)
    tokenizer = AutoTokenizer.from_pretrained(str(work / "tokenizer"))
    config = model.llama_config(shape, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                                **overrides)
    model.write_config(config, target)
    tokenizer.save_pretrained(target)
    started = time.perf_counter()
    files = model.write_random_weights(config, target, device=device)
    size = sum(f.stat().st_size for f in files)
    return {"model_path": str(target), "model_dir": str(target.parent), "bytes": size,
            "seconds": round(time.perf_counter() - started, 1), "parameters": model.total_parameters(
                model.SHAPES[shape] | overrides)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("env", "data", "model"))
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--shape", choices=tuple(model.SHAPES))
    parser.add_argument("--tiny", action="store_true", help="the shape scaled down to a toy, on the CPU (smoke run)")
    args = parser.parse_args(argv)
    if args.step == "env":
        result = environment()
    elif args.step == "data":
        result = build_data(args.work, args.examples)
    elif args.tiny:
        result = build_model(args.work, args.shape, "cpu", **model.TINY)
    else:
        result = build_model(args.work, args.shape, "cuda")
    args.result.write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
