"""The general reference for people and for adapter_info.json: which adapter was kept and why in one line, the
`forgetting` section (the reference, its zero point, every evaluation's value, the threshold, the cost), and the
general reference beside the user's data in train.sh's end-of-run evaluation (training/report.py prints them)."""

from __future__ import annotations

import math
import statistics

from training.autostop import Monitor
from training.forgetting.compare import loss_side
from training.forgetting.reference import MAX_NEW_TOKENS
from training.forgetting.setup import off_reason


def general_phrase(forgetting: float, origin: str) -> str:
    """"general knowledge within 3% of the base model", "+62% over ...", or "no worse than ...'s"."""
    if forgetting <= 0:
        return f"general knowledge no worse than {origin}'s ({forgetting:+.1%} loss)"
    return f"general knowledge within {math.ceil(100 * forgetting - 1e-9)}% of {origin}"


def kept_description(monitor: Monitor, kind: str) -> str:
    """Which adapter was kept and why, in one line ("best (step 120: validation loss 0.4100, general knowledge
    within 3% of the base model)"); `kind` is "validation" or "training" (the loss watched)."""
    entry = next((h for h in reversed(monitor.history) if h["step"] == monitor.best_step), {})
    kept = f"step {monitor.best_step}: {kind} loss {monitor.best_val:.4f}"
    forgetting = entry.get("forgetting")
    if forgetting is None:
        return f"best ({kept})"
    if monitor.kept_outside:
        return (f"least forgetting ({kept}, general knowledge {forgetting:+.0%} over {monitor.general_origin}; no "
                f"evaluation stayed within --max-forgetting {monitor.rules.max_forgetting:.0%}, so this first one, "
                "which forgot least, is kept)")
    return f"best ({kept}, {general_phrase(forgetting, monitor.general_origin)})"


def forgetting_section(ctx, monitor: Monitor, reason: str, run_seconds: float) -> dict:
    """adapter_info.json's `forgetting`: whether and how the run watched the general reference, every
    evaluation's general loss and forgetting, the kept adapter's, the threshold, and the cost."""
    watch = ctx.general
    if watch is None:
        return {"watched": False, "reason": off_reason(ctx.cfg, ctx.data.objective.name, ctx.multimodal,
                                                       ctx.plan.processes) or "no general reference"}
    reference = watch.reference
    evaluations = [{"step": h["step"], "general_loss": h["general_loss"], "forgetting": h["forgetting"]}
                   for h in monitor.history if h.get("general_loss") is not None]
    kept = next((e for e in evaluations if e["step"] == monitor.best_step), None)
    built = reference.seconds if reference.origin == "built" else 0.0
    spent = sum(watch.seconds)
    return {
        "watched": True,
        "reference": {"prompts": len(reference.watch), "answer_tokens": reference.tokens,
                      "rendering": reference.rendering, "max_new_tokens": MAX_NEW_TOKENS,
                      "replay_prompts": len(reference.replay), "origin": reference.origin, "key": reference.key},
        "base_loss": reference.base_loss,
        "zero_loss": monitor.general_zero,
        "zero_point": monitor.general_origin,
        "max_forgetting": monitor.rules.max_forgetting,
        "stops": monitor.stops_on_forgetting,
        "stopped": reason.startswith("forgetting"),
        "evaluations": evaluations,
        "kept": None if kept is None else {**kept, "within": not monitor.kept_outside},
        "cost": {"build_seconds": round(built, 3), "evaluations": len(watch.seconds),
                 "seconds_per_evaluation": round(statistics.fmean(watch.seconds), 3) if watch.seconds else None,
                 "evaluation_seconds": round(spent, 3),
                 "share_of_run": round((built + spent) / max(run_seconds, 1e-9), 4)},
    }


def with_general(evaluation: dict, section: dict) -> dict:
    """train.sh's end-of-run evaluation with the general reference beside the user's data: the base model's loss
    and the kept adapter's, as measured during the run (no extra pass)."""
    kept = section.get("kept")
    if "skipped" in evaluation or not section.get("watched") or kept is None:
        return evaluation
    base, tuned = section["base_loss"], kept["general_loss"]
    evaluation["general"] = {"base": loss_side(base), "tuned": loss_side(tuned), "forgetting": (tuned - base) / base,
                             "prompts": section["reference"]["prompts"],
                             "answer_tokens": section["reference"]["answer_tokens"]}
    return evaluation


def _side(loss: float) -> dict:
    return {"loss": loss, "perplexity": math.exp(min(loss, 50))}
