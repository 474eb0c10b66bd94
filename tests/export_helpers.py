"""Installed tiny models with a non-trivial adapter and the logits to compare exports against (the export, eval
and llama.cpp serving tests, and bench/serve_engines.py)."""

from __future__ import annotations

import json
from pathlib import Path


def install_local(source: Path, models: Path, name: str, **options) -> Path:
    """Install a local model directory; returns the installed model's directory."""
    from installer.install import InstallOptions, install

    result = install(InstallOptions(model=str(source), name=name, models_dir=models, **options), echo=lambda _m: None)
    return result.model_dir.root


def add_adapter(model_root: Path, targets="all-linear", seed: int = 1, base_model: str | None = None,
                rank: int = 4) -> Path:
    """A LoRA adapter in model_root/lora laid out as train.sh writes it, with non-zero B matrices (a fresh LoRA
    is the identity, which would make every merge check pass)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from training.outputs import save_adapter_dir

    base = AutoModelForCausalLM.from_pretrained(str(model_root / "model"), dtype=torch.float32)
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                            task_type="CAUSAL_LM"))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0, 0.05)
    save_adapter_dir(model, model_root / "lora")
    info = json.loads((model_root / "model_info.json").read_text())
    (model_root / "lora" / "adapter_info.json").write_text(json.dumps(
        {"base_model": base_model or info["source"], "base_model_path": str(model_root / "model"),
         "hyperparameters": {"method": "lora"}}))
    return model_root / "lora"


def reference_logits(model_root: Path, ids, adapter: Path | None = None):
    """Logits of base + adapter as start.sh computes them (PEFT, unmerged), float32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_root / "model"), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter or model_root / "lora")).eval()
    with torch.no_grad():
        return model(ids).logits


def merged_logits(path: Path, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def leftovers(directory: Path) -> list[str]:
    """Temporary names an export might leave behind."""
    return [p.name for p in directory.rglob(".*tmp-*")] if directory.exists() else []
