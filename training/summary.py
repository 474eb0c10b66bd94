"""adapter_info.json: what was trained, on what, how, and how it ended."""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import asdict
from pathlib import Path

from training.autostop import Monitor
from training.context import RunContext
from training.forgetting.report import forgetting_section


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _perplexity(loss: float | None) -> float | None:
    return math.exp(min(loss, 50)) if loss is not None else None


def skipped_records(skipped: list) -> dict:
    """The records left out of training (no answer, or an answer cut off entirely): how many for each reason and
    the first few by file and record number."""
    reasons: dict[str, int] = {}
    for _example, why in skipped:
        reasons[why] = reasons.get(why, 0) + 1
    return {"count": len(skipped), "reasons": reasons,
            "first": [{"source": e.origin, "record": e.index + 1, "reason": why} for e, why in skipped[:10]]}


def adapter_info(ctx: RunContext, monitor: Monitor, state, reason: str, baseline: float | None, which: str,
                 resumed: Path | None, validated: bool) -> dict:
    """The record saved beside the adapter (and read by start.sh, export and the report)."""
    cfg, info, model_path, data, plan, rules = ctx.cfg, ctx.info, ctx.model_path, ctx.data, ctx.plan, ctx.rules
    best = monitor.best_val if math.isfinite(monitor.best_val) else None
    best_val = best if validated else None
    train_losses = [h["train_loss"] for h in state.history if "train_loss" in h and "val_loss" not in h]
    workdir = plan.checkpoints.parent
    forgetting = forgetting_section(ctx, monitor, reason, time.monotonic() - ctx.started)
    kept_general = forgetting.get("kept") or {}
    return {
        "base_model": info.get("source") or str(model_path),
        "base_model_revision": info.get("revision"),
        "base_model_path": str(model_path),
        "data": [{"source": s.origin, "sha256": s.sha256, "records": len(s.records), "entry": s.entry,
                  "weight": s.weight} for s in data.sources],
        "formats": data.formats,
        "task_type": data.task,
        "examples": len(data.examples),
        "truncated_examples": data.truncated,
        "skipped_records": skipped_records(data.objective.skipped),
        "mode": cfg.mode,
        "circular": cfg.circular,
        "force_epochs": cfg.force_epochs,
        "distributed": {"processes": plan.processes, "strategy": plan.strategy if plan.processes > 1 else None},
        "resumed_from": str(resumed.relative_to(workdir)) if resumed and resumed.is_relative_to(workdir)
        else (str(resumed) if resumed else None),
        "hyperparameters": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                            "lora_r": ctx.lora.rank, "lora_alpha": ctx.lora.alpha, "target_modules": ctx.lora.targets,
                            "learning_rate": plan.learning_rate, "examples_per_step": plan.examples_per_step,
                            "gradient_accumulation_steps": plan.accumulation, "row_length": plan.row_length,
                            "epochs": None if math.isinf(plan.epochs) else plan.epochs,
                            "precision": plan.precision, "device": plan.device},
        "autostop": asdict(rules) | {"enabled": monitor.enabled,
                                     "watched": "validation loss" if validated else "training loss"},
        "stop_reason": reason,
        "adapter": which,
        "metrics": {"baseline_val_loss": baseline, "best_val_loss": best_val, "best_step": monitor.best_step,
                    "best_train_loss": None if validated else best,
                    "first_train_loss": train_losses[0] if train_losses else None,
                    "final_train_loss": train_losses[-1] if train_losses else None,
                    "baseline_perplexity": _perplexity(baseline), "best_perplexity": _perplexity(best_val),
                    "steps": state.step, "evaluations": state.evals, "tokens": state.tokens,
                    "train_seconds": round(state.train_seconds, 2),
                    "base_general_loss": forgetting.get("base_loss"), "general_loss": kept_general.get("general_loss"),
                    "forgetting": kept_general.get("forgetting")},
        "forgetting": forgetting,
        "adaptive_changes": state.changes,
        "timings": {"seconds": round(time.monotonic() - ctx.started, 2), "finished_at": _now()},
        "finished_at": _now(),
    }
