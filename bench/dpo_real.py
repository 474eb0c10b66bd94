#!/usr/bin/env python3
"""DPO on a real model: optimizer-step time against SFT, and reward accuracy after a short run.

Model: SmolLM2-135M-Instruct (tests/real_model.py). Data: bench/train_real.py's stdlib instruction set
("What does `json.dumps` do?" -> its docstring); a preference pair's chosen answer is the right docstring,
its rejected answer the docstring of another function (plausible, wrong).

1. Step time: the engine's Trainer on the same prompts, `--batch-size` examples per step, LoRA r=16 on every
   linear layer: SFT on (prompt, chosen) vs DPO on (prompt, chosen, rejected); mean of `--steps` optimizer
   steps after one warm-up step, SFT and DPO steps interleaved (and SFT on twice the examples: as many
   tokens as DPO's step). DPO's step runs the policy over both
   answers; its reference log-probs were computed once before training (timed separately, per pair).
2. Reward accuracy: `./train.sh --data pairs.json` (DPO detected) on `--pairs` pairs with a validation split,
   as a user runs it; the report's reward accuracy and margin on the validation pairs.

    OMP_NUM_THREADS=1 .venv/bin/python bench/dpo_real.py [--steps 5] [--batch-size 4] [--pairs 80] [--only steps|train]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


def preference_pairs(count: int, seed: int = 0) -> list[dict]:
    """Chosen: the function's own docstring; rejected: another function's."""
    from train_real import instruction_set

    records = instruction_set(count, seed)
    rng = random.Random(seed)
    others = list(range(len(records)))
    rng.shuffle(others)
    pairs = []
    for i, record in enumerate(records):
        j = others[i] if others[i] != i else others[(i + 1) % len(others)]
        if records[j]["output"] == record["output"]:
            continue
        pairs.append({"prompt": [{"role": "user", "content": record["instruction"]}],
                      "chosen": [{"role": "assistant", "content": record["output"]}],
                      "rejected": [{"role": "assistant", "content": records[j]["output"]}]})
    return pairs


def _trainer(model_path: Path, data: list, objective, batch: int, max_length: int):
    import torch
    from accelerate.state import AcceleratorState, GradientState
    from transformers import AutoModelForCausalLM

    from handlers.generic import discover_linear_targets
    from training.autostop import Monitor, rules_for
    from training.launch import Topology, make_accelerator
    from training.loop import Trainer
    from training.modeling import wrap_with_lora
    from training.schedule import Plan

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.config.use_cache = False
    model = wrap_with_lora(model, discover_linear_targets(model), 16, 32, 0.0, False, False)
    plan = Plan(epochs=1, examples_per_step=batch, accumulation=1, learning_rate=2e-4, evals_per_epoch=1,
                circular=False, adaptive=False, constant_lr=True, optimizer="adamw_torch", precision="float32",
                device="cpu", checkpoints=Path(tempfile.mkdtemp()) / "checkpoints", save_total_limit=1,
                row_length=max_length)
    accelerator = make_accelerator(Topology(1, "ddp"), "cpu", "float32", 1, batch)
    return Trainer(model, plan, data, [], Monitor(rules_for("qa"), enabled=False), pad_id=0, seed=0,
                   accelerator=accelerator, objective=objective)


def _step(trainer, step: int, batch: int) -> float:
    start = step * batch % max(1, len(trainer.train_set) - batch)
    started = time.perf_counter()
    trainer.train_step(list(range(start, start + batch)))
    return time.perf_counter() - started


def step_times(steps: int, batch: int) -> dict:
    """Mean optimizer-step seconds of SFT and DPO, their steps interleaved so that the load of a shared
    machine falls on both alike."""
    from real_model import smollm2_model_dir
    from transformers import AutoTokenizer

    from training.data.formats import examples_from_source
    from training.data.sources import SourceRecords
    from training.data.tokenize import tokenize_all
    from training.objectives.dpo import PreferenceObjective, compute_reference, tokenize_pairs

    model_path = smollm2_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    pairs_raw = preference_pairs(batch * (steps + 2))
    sft_raw = [{"messages": p["prompt"] + p["chosen"]} for p in pairs_raw]
    max_length = 1024
    sft = tokenize_all(tokenizer, examples_from_source(SourceRecords("sft", sft_raw), None), max_length)
    pairs = tokenize_pairs(tokenizer, examples_from_source(SourceRecords("pairs", pairs_raw), None), max_length)
    # rows as train.sh plans them: as wide as the longest example (SFT) or pair (DPO packs narrower itself)
    sft_row, dpo_row = (max(len(t.input_ids) for t in data) for data in (sft, pairs))
    sft_trainer = _trainer(model_path, sft, None, batch, sft_row)
    sft_double = _trainer(model_path, sft, None, 2 * batch, sft_row)  # SFT on as many tokens as DPO's step
    dpo_trainer = _trainer(model_path, pairs, PreferenceObjective(0.1), batch, dpo_row)
    started = time.perf_counter()
    compute_reference(dpo_trainer, pairs, None)
    reference = (time.perf_counter() - started) / len(pairs)
    for trainer, size in ((sft_trainer, batch), (sft_double, 2 * batch), (dpo_trainer, batch)):
        trainer._set_lr()
        _step(trainer, 0, size)  # warm-up
    sft_times, double_times, dpo_times = [], [], []
    for step in range(1, steps + 1):
        sft_times.append(_step(sft_trainer, step, batch))
        dpo_times.append(_step(dpo_trainer, step, batch))
        double_times.append(_step(sft_double, step, 2 * batch))
    sft_step, dpo_step = sum(sft_times) / steps, sum(dpo_times) / steps
    tokens = [sum(len(data[i].input_ids) for s in range(1, steps + 1) for i in range(
        s * batch % max(1, len(data) - batch), s * batch % max(1, len(data) - batch) + batch)) / steps
        for data in (sft, pairs)]
    return {"examples_per_step": batch, "sft_step_s": round(sft_step, 3), "dpo_step_s": round(dpo_step, 3),
            "dpo_over_sft": round(dpo_step / sft_step, 2), "reference_pass_s_per_pair": round(reference, 3),
            "sft_tokens_per_step": round(tokens[0]), "dpo_tokens_per_step": round(tokens[1]),
            "dpo_over_sft_per_token": round(dpo_step / tokens[1] / (sft_step / tokens[0]), 2),
            "sft_2x_examples_step_s": round(sum(double_times) / steps, 3)}


def reward_accuracy(count: int, epochs: int) -> dict:
    from conftest import copy_installed
    from real_model import smollm2_model_dir

    from installer.install import InstallOptions, install

    work = Path(tempfile.mkdtemp(prefix="dpo-real-"))
    os.environ["LLM_MODELS_DIR"] = str(work / "models")
    installed = install(InstallOptions(model=str(smollm2_model_dir()), models_dir=work / "models", name="smol"),
                        echo=lambda _m: None)
    model_dir = copy_installed(installed.model_dir.root, work / "smol")
    data = work / "pairs.json"
    data.write_text(json.dumps(preference_pairs(count, seed=1)))
    command = [str(model_dir / "train.sh"), "--data", str(data), "--epochs", str(epochs), "--validation-split", "0.25",
               "--no-tensorboard", "--skip-test", "--lora-r", "16", "--target-modules", "all-linear",
               "--learning-rate", "5e-4", "--batch-size", "4"]
    started = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"train.sh exited with {result.returncode}:\n{result.stdout[-3000:]}")
    info = json.loads((model_dir / "lora" / "adapter_info.json").read_text())
    lines = [line for line in result.stdout.splitlines() if line.startswith(("DPO", "Rewards", "Validation", "Steps"))]
    return {"pairs": count, "seconds": round(seconds, 1), "preference": info["preference"],
            "baseline_val_loss": info["metrics"]["baseline_val_loss"], "best_val_loss": info["metrics"]["best_val_loss"],
            "report": lines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=80)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--only", choices=("steps", "train"), help="run one part only")
    args = parser.parse_args()
    load = os.getloadavg()
    print(json.dumps({"load_before": [round(x, 2) for x in load]}), flush=True)
    if args.only != "train":
        print(json.dumps(step_times(args.steps, args.batch_size), indent=1), flush=True)
    if args.only != "steps":
        print(json.dumps(reward_accuracy(args.pairs, args.epochs), indent=1), flush=True)
    print(json.dumps({"load_after": [round(x, 2) for x in os.getloadavg()]}), flush=True)


if __name__ == "__main__":
    main()
