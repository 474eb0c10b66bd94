"""`llm-installer eval`'s general comparison: the base model and the tuned one on the general reference, beside
the user's held-out data, so the trade is visible ("domain: perplexity 13.9 → 1.4; general: ... (loss +5%)")."""

from __future__ import annotations

import math
import time
from pathlib import Path

from training.forgetting.reference import general_reference, reference_loss


def general_comparison(model, tokenizer, model_path: Path, workdir: Path, device, rendering: str) -> dict:
    """{"base": {"loss", "perplexity"}, "tuned": {...}, "forgetting", "prompts", "answer_tokens", "reference",
    "seconds"} for a PEFT model with its adapter loaded. The reference comes from the model directory's cache
    (train.sh made it) or is built with the adapter switched off; its base loss is the base side."""
    started = time.monotonic()
    with model.disable_adapter():
        reference = general_reference(model, tokenizer, model_path, workdir, device, rendering)
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tuned = reference_loss(model, reference.watch_examples(), pad, device)
    base = reference.base_loss
    return {"base": loss_side(base), "tuned": loss_side(tuned), "forgetting": (tuned - base) / base,
            "prompts": len(reference.watch), "answer_tokens": reference.tokens, "reference": reference.origin,
            "seconds": round(time.monotonic() - started, 3)}


def loss_side(loss: float) -> dict:
    """One side of a general comparison: the loss and its perplexity."""
    return {"loss": loss, "perplexity": math.exp(min(loss, 50))}
