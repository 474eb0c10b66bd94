"""Writing results: checkpoints, the adapter in ./lora (atomically, previous one kept),
adapter_info.json and training_history.png."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def save_adapter_dir(model, directory: Path, tokenizer=None, chat_template: str | None = None) -> None:
    """Adapter weights (safetensors, plus adapter_model.bin for tools that expect it) and config."""
    import torch
    from peft import get_peft_model_state_dict

    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(directory), safe_serialization=True)
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    torch.save(state, directory / "adapter_model.bin")
    if chat_template:
        (directory / "chat_template.jinja").write_text(chat_template, encoding="utf-8")


def numbered_checkpoints(root: Path) -> list[Path]:
    """checkpoint-N directories in numeric order of N."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def prune_checkpoints(root: Path, keep: int) -> None:
    for old in numbered_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def set_aside_checkpoints(root: Path) -> bool:
    """Move a previous run's checkpoints to <root>.prev (replacing an older one); True if there were any."""
    if not root.is_dir() or not any(root.iterdir()):
        return False
    previous = root.with_name(root.name + ".prev")
    shutil.rmtree(previous, ignore_errors=True)
    os.replace(root, previous)
    return True


def adopt_run(checkpoint: Path, root: Path) -> Path:
    """Make the run `checkpoint` belongs to the current one in `root`, so new checkpoints and its best/
    continue it; returns the checkpoint's path afterwards. checkpoints.prev swaps places with checkpoints."""
    source = checkpoint.parent
    if source == root:
        return checkpoint
    if source == root.with_name(root.name + ".prev"):
        parked = root.with_name(root.name + ".swap")
        if root.exists():
            os.replace(root, parked)
        os.replace(source, root)
        if parked.exists():
            os.replace(parked, source)
        return root / checkpoint.name
    set_aside_checkpoints(root)
    root.mkdir(parents=True, exist_ok=True)
    if (source / "best").is_dir():
        shutil.copytree(source / "best", root / "best")
    return checkpoint


def replace_dir_atomically(staging: Path, target: Path) -> Path | None:
    """Move `staging` to `target`; an existing target becomes target.prev (returned)."""
    previous = target.with_name(target.name + ".prev")
    if target.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(target, previous)
    os.replace(staging, target)
    return previous if previous.exists() else None


def publish_adapter(source: Path, output: Path, info: dict, texts: dict[str, str] | None = None) -> Path | None:
    """Copy an adapter directory to `output` with adapter_info.json (and `texts`, file name -> content, such as
    run.yaml), atomically; returns the kept previous one."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        for item in source.iterdir():
            if item.is_file() and item.name not in (STATE_FILE, "optimizer.pt", "scheduler.pt"):
                shutil.copy2(item, staging / item.name)
        write_json(staging / "adapter_info.json", info)
        for name, text in (texts or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
        return replace_dir_atomically(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def plot_history(history: list[dict], path: Path, forgetting_limit: float | None = None) -> None:
    """training_history.png: train and validation loss, the general reference's loss (with the loss at which the
    forgetting rule stops, `forgetting_limit`, when it is on) and the learning rate, by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [h for h in history if "val_loss" in h]
    steps = [h for h in history if "train_loss" in h and "val_loss" not in h]
    figure, (loss_ax, lr_ax) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    if steps:
        loss_ax.plot([h["step"] for h in steps], [h["train_loss"] for h in steps], label="train loss", alpha=0.6)
    if evals:
        loss_ax.plot([h["step"] for h in evals], [h["val_loss"] for h in evals], "o-", label="validation loss")
    general = [h for h in history if h.get("general_loss") is not None]
    if general:
        loss_ax.plot([h["step"] for h in general], [h["general_loss"] for h in general], "s-", color="tab:purple",
                     label="general reference loss")
        if forgetting_limit is not None:
            loss_ax.axhline(forgetting_limit, color="tab:purple", linestyle=":", label="forgetting limit")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    lr_points = [h for h in history if "lr" in h]
    lr_ax.plot([h["step"] for h in lr_points], [h["lr"] for h in lr_points], color="tab:green")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("step")
    lr_ax.grid(alpha=0.3)
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)
