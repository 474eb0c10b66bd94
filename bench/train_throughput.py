#!/usr/bin/env python3
"""Training throughput: llm-installer's packed engine against a pad-to-max-length Trainer + PEFT baseline.

Both train the same tiny model (the built-in tiny-chat architecture, fresh copy each) with the same
LoRA settings for the same number of optimizer steps and the same rows per step, on chat data whose
lengths spread like real instruction sets (log-normal answers). Reported: useful tokens (non-padding,
loss-bearing) per second for each, and their ratio measured side by side in one run.

    .venv/bin/python bench/train_throughput.py [--steps 30] [--examples 400] [--max-length 512]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("the model answers short questions about data files training servers adapters and tokens while "
         "a small assistant keeps every reply clear and useful for people who run it on their own computer").split()


def synthetic_chats(count: int, seed: int) -> list[dict]:
    """QA records with log-normal answer lengths (median ~40 words, long tail)."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        question = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 20))) + f" {i}?"
        length = max(3, min(300, int(rng.lognormvariate(math.log(40), 0.9))))
        records.append({"question": question, "answer": " ".join(rng.choice(WORDS) for _ in range(length))})
    return records


def _lora_model(model_dir: Path, targets, rank: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.use_cache = False
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                            lora_dropout=0.0, task_type="CAUSAL_LM"))


def run_engine(model_dir: Path, tokenized, args, workdir: Path) -> tuple[int, float, int]:
    """Our loop on packed rows; returns (useful tokens, seconds, steps)."""
    from training.autostop import Monitor, rules_for
    from training.loop import Plan, StopSignal, Trainer
    from training.packing import pack, useful_tokens

    rows = pack(tokenized, args.max_length, seed=0)
    per_epoch = math.ceil(len(rows) / args.batch_size)
    plan = Plan(epochs=args.steps / per_epoch, batch_size=args.batch_size, accumulation=1, learning_rate=3e-3,
                evals_per_epoch=1, circular=False, adaptive=False, constant_lr=False, optimizer="adamw_torch",
                precision="float32", device="cpu", checkpoints=workdir / "engine-checkpoints", save_total_limit=1)
    model = _lora_model(model_dir, "all-linear", args.rank)
    trainer = Trainer(model, plan, rows, [], Monitor(rules_for("qa"), enabled=False), pad_id=0, seed=0)
    started = time.perf_counter()
    with StopSignal() as stop:
        trainer.run(stop)
    seconds = time.perf_counter() - started
    steps = trainer.state.step
    # Count exactly the rows the loop consumed: whole epochs plus the prefix of the last one.
    consumed = _consumed_rows(len(rows), args.batch_size, steps, seed=0)
    return sum(useful_tokens([rows[i]]) for i in consumed), seconds, steps


def _consumed_rows(count: int, batch: int, steps: int, seed: int) -> list[int]:
    consumed, epoch = [], 0
    while steps > 0:
        order = list(range(count))
        random.Random(seed + epoch).shuffle(order)
        take = min(steps, math.ceil(count / batch))
        consumed += order[: take * batch]
        steps -= take
        epoch += 1
    return consumed


def run_baseline(model_dir: Path, tokenized, args, workdir: Path, pad_id: int) -> tuple[int, float, int]:
    """transformers Trainer + PEFT, every example padded to max length; returns (useful tokens, seconds, steps)."""
    import torch
    from transformers import Trainer, TrainingArguments

    from training.tokenize import IGNORE_INDEX

    class Padded(torch.utils.data.Dataset):
        def __len__(self):
            return len(tokenized)

        def __getitem__(self, index):
            item = tokenized[index]
            pad = args.max_length - len(item.input_ids)
            return {"input_ids": torch.tensor(item.input_ids + [pad_id] * pad),
                    "attention_mask": torch.tensor([1] * len(item.input_ids) + [0] * pad),
                    "labels": torch.tensor(item.labels + [IGNORE_INDEX] * pad)}

    model = _lora_model(model_dir, "all-linear", args.rank)
    training_args = TrainingArguments(output_dir=str(workdir / "baseline"), max_steps=args.steps,
                                      per_device_train_batch_size=args.batch_size, learning_rate=3e-3,
                                      logging_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
                                      dataloader_num_workers=0, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=Padded())
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    seen = args.steps * args.batch_size
    # The Trainer's sampler is random; lengths are i.i.d., so the expected useful tokens of `seen` examples:
    mean_useful = sum(t.trainable for t in tokenized) / len(tokenized)
    return int(mean_useful * seen), seconds, args.steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()

    import logging

    import torch
    from transformers import AutoTokenizer

    from installer.builtin import build
    from training.formats import convert_record
    from training.tokenize import tokenize_all

    logging.disable(logging.WARNING)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_dir = build("tiny-chat", workdir / "model")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        examples = [convert_record(r, "qa", "bench", i) for i, r in enumerate(synthetic_chats(args.examples, 0))]
        tokenized = tokenize_all(tokenizer, examples, args.max_length)
        lengths = sorted(len(t.input_ids) for t in tokenized)
        print(f"{len(tokenized)} examples, tokens per example: median {lengths[len(lengths) // 2]}, "
              f"p90 {lengths[int(0.9 * len(lengths))]}, max {lengths[-1]}; max length {args.max_length}; "
              f"{args.steps} steps of {args.batch_size} rows; torch threads {torch.get_num_threads()}")
        results = {}
        for name, runner in (("baseline (padded Trainer + PEFT)", lambda: run_baseline(
                model_dir, tokenized, args, workdir, tokenizer.pad_token_id)),
                             ("llm-installer engine (packed)", lambda: run_engine(model_dir, tokenized, args,
                                                                                  workdir))):
            tokens, seconds, steps = runner()
            results[name] = tokens / seconds
            print(f"{name:34s} {steps} steps, {tokens:7d} useful tokens in {seconds:6.2f} s = "
                  f"{tokens / seconds:8.0f} useful tokens/s")
        baseline, engine = results.values()
        print(f"ratio engine / baseline: {engine / baseline:.2f}x")


if __name__ == "__main__":
    main()
