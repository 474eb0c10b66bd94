#!/usr/bin/env python3
"""The hand-written baseline a user would write: transformers.Trainer + PEFT LoRA, dynamic padding,
loss on the answer tokens only (prompt masked), one epoch.

    python bench/baselines/trainer_peft.py --model DIR --data train.json --out ADAPTER_DIR
"""

import argparse
import json

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments


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

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    records = json.load(open(args.data))
    features = []
    for record in records:
        prompt = [{"role": "user", "content": record["instruction"]}]
        full = prompt + [{"role": "assistant", "content": record["output"]}]
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"]
        full_ids = tokenizer.apply_chat_template(full, tokenize=True, return_dict=True)["input_ids"][:2048]
        labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids):]
        features.append({"input_ids": full_ids, "attention_mask": [1] * len(full_ids), "labels": labels})

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    training_args = TrainingArguments(output_dir=args.out + "-trainer", num_train_epochs=1,
                                      per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                                      lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=10,
                                      save_strategy="no", report_to=[], seed=args.seed, disable_tqdm=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=features,
                      data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    result = trainer.train()
    print(json.dumps({"steps": trainer.state.global_step, "train_seconds": result.metrics["train_runtime"]}))
    model.save_pretrained(args.out)


if __name__ == "__main__":
    main()
