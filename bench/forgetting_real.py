#!/usr/bin/env python3
"""Forgetting on a real model: the general reference's signal, its stop, --replay, and what it costs.

Model: SmolLM2-135M-Instruct (tests/real_model.py), installed with `llm-installer install DIR` as a user would.
Runs, each the whole `./train.sh` command:
- overfit, defaults: the quick-start answers (examples/data/quickstart_qa.json, 12 records, no validation set) with
  the demo's recipe pushed far (LoRA on every linear layer, lr 3e-3, 4 examples per step) for up to --epochs epochs,
  auto-stop on: the forgetting rule should end it before the general reference degrades past --max-forgetting;
- overfit, --force-epochs: the same run to the end, every stop off: how far the degradation goes;
- overfit, --force-epochs --replay R: the same with R of every epoch replaying general examples: less degradation at
  a similar loss on the user's data; and overfit, --replay R with auto-stop on;
- healthy: bench/train_real.py's run (120 stdlib-docstring instructions, LoRA r16 on every linear layer, lr 2e-4, one
  epoch, validation split on): the default must not stop it. Its adapter_info.json gives the reference's cost.
Reported per run: stop reason, optimizer steps, wall time, the kept adapter's loss on the user's data (mean over the
answer tokens of the 12 records, the training objective) and on the general reference, the rise over the base, and
how many of the 12 answers it gives exactly. The general reference's cost: build seconds, seconds per evaluation,
share of the run.

    .venv/bin/python bench/forgetting_real.py [--epochs 30] [--replay 0.3] [--only defaults,force,replay,healthy]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
FACTS = ROOT / "examples" / "data" / "quickstart_qa.json"
OVERFIT = ["--target-modules", "all-linear", "--learning-rate", "3e-3", "--batch-size", "4"]
HEALTHY = ["--lora-r", "16", "--lora-alpha", "32", "--target-modules", "all-linear", "--learning-rate", "2e-4",
           "--epochs", "1"]


def train(model_dir: Path, data: Path, args: list[str]) -> tuple[float, dict, str]:
    """(wall seconds, adapter_info.json, output) of one ./train.sh run; the adapter is copied aside."""
    command = [str(model_dir / "train.sh"), "--data", str(data), *args, "--no-tensorboard", "--skip-test"]
    started = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-4000:]}")
    return seconds, json.loads((model_dir / "lora" / "adapter_info.json").read_text()), result.stdout


class Scorer:
    """The kept adapter on the facts (mean loss over their answer tokens, exact greedy answers) and on the general
    reference (the model directory's cached one), through the engine's own evaluation code."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        from training.data.formats import Example
        from training.evaluate import prepare
        from training.forgetting.reference import GeneralReference, read_cache

        self.model_dir = model_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir / "model")
        records = json.loads(FACTS.read_text())
        examples = [Example("qa", "facts", i, messages=[{"role": "user", "content": r["question"]},
                                                       {"role": "assistant", "content": r["answer"]}])
                    for i, r in enumerate(records)]
        self.facts = prepare(self.tokenizer, examples, 2048)
        self.answers = [r["answer"] for r in records]
        entry = next(e for e in read_cache(model_dir) if e["rendering"] == "chat")
        self.general = GeneralReference.from_dict(entry, "cache").watch_examples()

    def score(self, adapter: Path | None) -> dict:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from training.evaluate import answer_loss, greedy_answers
        from training.forgetting.reference import reference_loss

        base = AutoModelForCausalLM.from_pretrained(self.model_dir / "model", dtype=torch.float32)
        model = (PeftModel.from_pretrained(base, str(adapter)) if adapter else base).eval()
        pad = self.tokenizer.pad_token_id or 0
        total, count = answer_loss(model, self.facts, pad, "cpu")
        said = greedy_answers(model, self.tokenizer, [i.prompt_ids for i in self.facts.items], 32, 12, "cpu")
        return {"domain_loss": total / count, "general_loss": reference_loss(model, self.general, pad, "cpu"),
                "exact": sum(a.strip() == b.strip() for a, b in zip(said, self.answers, strict=True)),
                "facts": len(self.answers)}


def row(name: str, seconds: float, info: dict, scored: dict) -> str:
    forgetting = info["forgetting"]
    base = forgetting["base_loss"]
    rise = (scored["general_loss"] - base) / base
    return (f"| {name} | {info['stop_reason']} | {info['metrics']['steps']} | {seconds:.0f} s | "
            f"{scored['domain_loss']:.3f} | {base:.3f} → {scored['general_loss']:.3f} ({rise:+.0%}) | "
            f"{scored['exact']}/{scored['facts']} |")


def cost(info: dict, seconds: float) -> str:
    c = info["forgetting"]["cost"]
    return (f"build {c['build_seconds']:.1f} s, {c['evaluations']} evaluations x {c['seconds_per_evaluation'] or 0:.2f} s "
            f"= {c['evaluation_seconds']:.1f} s, {c['share_of_run']:.1%} of the run ({seconds:.0f} s wall)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--replay", type=float, default=0.3)
    parser.add_argument("--only", default="force,defaults,replay,defaults-replay,healthy")
    args = parser.parse_args()

    from real_model import smollm2_model_dir
    from train_real import instruction_set

    only = args.only.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([str(ROOT / "llm-installer"), "install", str(smollm2_model_dir()), "--name", "smollm2",
                        "--models-dir", str(work / "models")], check=True, stdout=subprocess.DEVNULL)
        model_dir = work / "models" / "smollm2"
        epochs = ["--epochs", str(args.epochs)]
        runs = {"defaults": (FACTS, OVERFIT + epochs),
                "force": (FACTS, OVERFIT + epochs + ["--force-epochs"]),
                "replay": (FACTS, OVERFIT + epochs + ["--force-epochs", "--replay", str(args.replay)]),
                "defaults-replay": (FACTS, OVERFIT + epochs + ["--replay", str(args.replay)]),
                "healthy": (work / "docstrings.json", HEALTHY)}
        (work / "docstrings.json").write_text(json.dumps(instruction_set(120, seed=0)))
        labels = {"defaults": "overfit, defaults", "force": "overfit, --force-epochs",
                  "replay": f"overfit, --force-epochs --replay {args.replay:g}",
                  "defaults-replay": f"overfit, --replay {args.replay:g}",
                  "healthy": "healthy: 120 docstrings, lr 2e-4, 1 epoch (domain: validation loss)"}
        lines, scorer = [], None
        for name in only:
            data, flags = runs[name]
            seconds, info, _output = train(model_dir, data, flags)
            adapter = work / f"lora-{name}"
            subprocess.run(["cp", "-r", str(model_dir / "lora"), str(adapter)], check=True)
            scorer = scorer or Scorer(model_dir)
            scored = scorer.score(adapter)
            if name == "healthy":
                scored["domain_loss"] = info["metrics"]["best_val_loss"]
            trajectory = ", ".join(f"{e['step']}: {e['forgetting']:+.0%}" for e in info["forgetting"]["evaluations"])
            print(f"{name}: {info['stop_reason']}\n  kept {info['adapter']}\n  forgetting by step: {trajectory}\n"
                  f"  cost: {cost(info, seconds)}\n  scored: {scored}", flush=True)
            lines.append(row(labels[name], seconds, info, scored))
        base = scorer.score(None) if scorer else None
        if base:
            print(f"base model: domain loss {base['domain_loss']:.3f}, general loss {base['general_loss']:.3f}, "
                  f"{base['exact']}/{base['facts']} exact answers")
        print("\n| run | stop reason | steps | wall | domain loss | general loss (base → kept) | exact answers |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
