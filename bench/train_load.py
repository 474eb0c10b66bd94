#!/usr/bin/env python3
"""`./train.sh` against the hand-written Trainer + PEFT script, idle and with another CPU-bound process on
the machine: how much each slows down when the user's laptop is busy.

Model: a toy llama (4 layers, hidden 128, random weights, the test tokenizer) or, with `--model real`,
SmolLM2-135M-Instruct (tests/real_model.py). Data: 240 instruction examples of skewed length. Every contender
trains one epoch at batch 4, whole command; under load, one busy-looping Python process runs beside it.
The contenders alternate, idle then loaded, so both see the same machine.

    .venv/bin/python bench/train_load.py [--model toy|real] [--rounds 1] [--examples 240]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from train_real import LORA, instruction_set, run_command  # noqa: E402

BUSY_LOOP = "while True: pass"


def toy_model(dest: Path) -> Path:
    """A 4-layer, hidden-128 llama with random weights and the test tokenizer."""
    import torch
    from tiny_models import COMMON, train_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(dest)
    config = AutoConfig.for_model("llama", **{**COMMON, "hidden_size": 128, "intermediate_size": 256,
                                              "num_hidden_layers": 4, "max_position_embeddings": 1024})
    config.eos_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(dest)
    return dest


def skewed_records(count: int, seed: int) -> list[dict]:
    """Short questions with answers whose lengths follow a long-tailed distribution (5 to ~300 words)."""
    rng = random.Random(seed)
    words = "the model learns what the user writes and answers in kind with numbers one two three".split()
    return [{"instruction": f"Question {n}: tell me about {rng.choice(words)}", "input": "",
             "output": " ".join(rng.choice(words) for _ in range(min(300, int(rng.paretovariate(1.2) * 5))))}
            for n in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("toy", "real"), default="toy")
    parser.add_argument("--examples", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.model == "real":
            from real_model import smollm2_model_dir

            source, records = smollm2_model_dir(), instruction_set(args.examples, seed=0)
        else:
            source, records = toy_model(work / "toy"), skewed_records(args.examples, seed=0)
        data = work / "train.json"
        data.write_text(json.dumps(records))
        run_command([str(ROOT / "llm-installer"), "install", str(source), "--name", "m", "--models-dir",
                     str(work / "models")])
        model_dir = work / "models" / "m"
        contenders = {
            "train.sh": [str(model_dir / "train.sh"), "--data", str(data), "--epochs", "1", *LORA, "--batch-size",
                         "4", "--no-tensorboard", "--skip-test"],
            "trainer": [sys.executable, str(ROOT / "bench/baselines/trainer_peft.py"), "--model", str(source),
                        "--data", str(data), "--out", str(work / "trainer")],
        }
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for condition in ("idle", "loaded"):
                for name, command in contenders.items():
                    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if condition == "loaded" else None
                    try:
                        seconds, _ = run_command(command)
                    finally:
                        if busy:
                            busy.kill()
                            busy.wait()
                    times.setdefault((name, condition), []).append(seconds)
                    print(f"{name:9s} {condition:6s} {seconds:7.1f} s", flush=True)
        for name in contenders:
            idle, loaded = min(times[name, "idle"]), min(times[name, "loaded"])
            print(f"{name:9s} idle {idle:6.1f} s  loaded {loaded:6.1f} s  slowdown under load {loaded / idle:.2f}x")
        print(f"train.sh speed vs Trainer: idle {min(times['trainer', 'idle']) / min(times['train.sh', 'idle']):.2f}x"
              f", loaded {min(times['trainer', 'loaded']) / min(times['train.sh', 'loaded']):.2f}x")


if __name__ == "__main__":
    main()
