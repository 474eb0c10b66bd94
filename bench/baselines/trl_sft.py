#!/usr/bin/env python3
"""TRL's SFTTrainer with packing (BFD, padding-free) and completion-only loss, one epoch: what a TRL user runs.

    python bench/baselines/trl_sft.py --model DIR --data train.json --out ADAPTER_DIR
"""

import argparse
import json

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    records = json.load(open(args.data))
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["instruction"]}],
                                  "completion": [{"role": "assistant", "content": r["output"]}]} for r in records])
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = SFTConfig(output_dir=args.out + "-trl", num_train_epochs=1, per_device_train_batch_size=args.batch_size,
                       learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0.05, packing=True,
                       packing_strategy="bfd", max_length=2048, completion_only_loss=True, logging_steps=10,
                       save_strategy="no", report_to=[], seed=args.seed, disable_tqdm=True,
                       bf16=torch.cuda.is_available())  # TRL defaults to bf16, which the CPU refuses
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05,
                                                target_modules="all-linear", task_type="CAUSAL_LM"))
    result = trainer.train()
    print(json.dumps({"steps": trainer.state.global_step, "train_seconds": result.metrics["train_runtime"]}))
    trainer.model.save_pretrained(args.out)


if __name__ == "__main__":
    main()
