#!/usr/bin/env python3
"""The hand-written baseline on the GPU: transformers.Trainer + PEFT LoRA as a user writes it (as
bench/baselines/trainer_peft.py, whose CPU settings do not fit a GPU: float32 weights, no bf16), in bf16.

- Data: the same alpaca records, rendered with the chat template, loss on the answer only (prompt masked),
  dynamic padding per batch (DataCollatorForSeq2Seq), per-device batch `--batch-size`, no accumulation.
- Model: the bf16 weights, LoRA r/alpha/dropout as our engine's flags, every linear layer ('all-linear'),
  Trainer's bf16 autocast, AdamW, constant learning rate, no gradient checkpointing.
- Measured as the engine probe measures: the end of each optimizer step (GPU-synchronised, in a callback), the
  tokens of each batch's examples (padding not counted, so tokens/s compare with the engine's), the padded
  tokens too, torch's peak allocated memory; after `--time-cap` seconds past the warm-up steps the callback
  stops training.

    trainer_probe.py --model DIR --data FILE --result R.json [--batch-size 4] [--rank 16] [--warmup 3] [--time-cap 25]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from gpu.data import chat_ids  # noqa: E402

MAX_LENGTH = 2048


class CountingCollator:
    """The real collator, remembering each batch's example lengths (call i is the batch of step i: no
    accumulation, and the data loader keeps the order in which it collates)."""

    def __init__(self, inner) -> None:
        self.inner, self.batches = inner, []

    def __call__(self, features):
        self.batches.append([len(f["input_ids"]) for f in features])
        return self.inner(features)


def features_of(tokenizer, records: list[dict]) -> list[dict]:
    features = []
    for record in records:
        prompt_ids, full_ids = chat_ids(tokenizer, record)
        full_ids = full_ids[:MAX_LENGTH]
        labels = ([-100] * len(prompt_ids) + full_ids[len(prompt_ids):])[:len(full_ids)]
        features.append({"input_ids": full_ids, "attention_mask": [1] * len(full_ids), "labels": labels})
    return features


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--time-cap", type=float, default=25.0)
    parser.add_argument("--precision", choices=("bfloat16", "float32"), default="bfloat16",
                        help="float32: only for a CPU smoke test of this script")
    args = parser.parse_args(argv)
    warmup = max(1, args.warmup)
    record: dict = {"status": "starting", "warmup": warmup, "time_cap": args.time_cap, "steps": [],
                    "peak_allocated": None, "peak_reserved": None, "precision": args.precision}

    def write() -> None:
        partial = args.result.with_suffix(".tmp")
        partial.write_text(json.dumps(record))
        partial.replace(args.result)

    write()
    try:
        train(args, warmup, record, write)
    except Exception as exc:  # recorded, and the traceback goes to the log
        record.update(status="error", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
        _memory(record)
        write()
        traceback.print_exc()
        return 1
    record["status"] = "ok"
    _memory(record)
    write()
    return 0


def _memory(record: dict) -> None:
    import torch

    if torch.cuda.is_available():
        record["peak_allocated"] = torch.cuda.max_memory_allocated()
        record["peak_reserved"] = torch.cuda.max_memory_reserved()


def train(args, warmup: int, record: dict, write) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    records = json.loads(args.data.read_text(encoding="utf-8"))
    features = features_of(tokenizer, records)
    dtype = torch.bfloat16 if args.precision == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=dtype)
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=args.dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    record.update(trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                  parameters=sum(p.numel() for p in model.parameters()), train_examples=len(features),
                  gradient_checkpointing=False, liger=False, quantization=None)
    collator = CountingCollator(DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    cuda = torch.cuda.is_available()

    class Timer(TrainerCallback):
        def on_step_end(self, _args, state, control, **_kwargs):
            if cuda:
                torch.cuda.synchronize()
            now = time.perf_counter()
            steps = record["steps"]
            index = len(steps)
            lengths = collator.batches[index] if index < len(collator.batches) else []
            steps.append({"end": now, "lengths": lengths, "padded": max(lengths, default=0) * len(lengths)})
            _memory(record)
            if len(steps) > warmup and now - steps[warmup - 1]["end"] >= args.time_cap:
                record["stopped_by_time_cap"] = True
                control.should_training_stop = True
            record["status"] = "training"
            write()
            return control

    with tempfile.TemporaryDirectory(prefix="trainer-probe-") as scratch:
        training_args = TrainingArguments(
            output_dir=scratch, max_steps=math.ceil(len(features) / args.batch_size),
            per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1, learning_rate=args.lr,
            lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch",
            bf16=args.precision == "bfloat16", logging_steps=10,
            save_strategy="no", report_to=[], seed=42, disable_tqdm=True, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=training_args, train_dataset=features, data_collator=collator,
                          callbacks=[Timer()])
        trainer.train()


if __name__ == "__main__":
    sys.exit(main())
