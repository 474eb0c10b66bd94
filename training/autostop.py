"""Deciding when to stop: validation trend, train/validation gap, patience, perfect loss and
perplexity explosion, with thresholds that depend on the task type."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

PERPLEXITY_EXPLOSION = 100.0
MIN_IMPROVEMENT = 1e-4


@dataclass(frozen=True)
class StopRules:
    """Thresholds for one task type (user flags override patience and threshold)."""

    task: str
    perfect_loss: float
    overfitting_threshold: float
    patience: int
    watch_perplexity: bool


def rules_for(task: str, patience: int | None = None, threshold: float | None = None) -> StopRules:
    """QA/instruction: perfect 0.01, 10%, patience 3. Text: perfect 0.5, 20%, patience 5, perplexity watch."""
    if task == "text":
        return StopRules("text", 0.5, threshold or 0.20, patience or 5, True)
    # preference pairs (DPO) use the QA thresholds on the DPO loss (it starts at ln 2 = 0.693)
    return StopRules("preference" if task == "preference" else "qa", 0.01, threshold or 0.10, patience or 3, False)


@dataclass
class Monitor:
    """Follows evaluations; `update` says whether to stop and why, and whether this one is the best."""

    rules: StopRules
    enabled: bool = True
    best_val: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    history: list[dict] = field(default_factory=list)

    def update(self, step: int, train_loss: float, val_loss: float | None) -> tuple[bool, str | None]:
        """(is_best, stop_reason or None) after one evaluation.

        Without validation data (`val_loss` None) the running training loss is watched instead: perfect
        loss and patience apply, the train/validation gap cannot.
        """
        monitored = train_loss if val_loss is None else val_loss
        improved = monitored < self.best_val - MIN_IMPROVEMENT
        if improved:
            self.best_val, self.best_step, self.bad_evals = monitored, step, 0
        else:
            self.bad_evals += 1
        self.history.append({"step": step, "train_loss": train_loss, "val_loss": val_loss, "monitored": monitored})
        return improved, (self._stop_reason(train_loss, val_loss) if self.enabled else None)

    def _stop_reason(self, train_loss: float, val_loss: float | None) -> str | None:
        rules = self.rules
        if val_loss is None:
            if train_loss <= rules.perfect_loss:
                return f"perfect loss reached (training loss {train_loss:.4f} <= {rules.perfect_loss})"
            if self.bad_evals >= rules.patience:
                return f"training loss did not improve for {self.bad_evals} checks (patience {rules.patience})"
            return None
        if train_loss <= rules.perfect_loss and val_loss <= max(rules.perfect_loss, self.best_val):
            return f"perfect loss reached (training loss {train_loss:.4f} <= {rules.perfect_loss})"
        # An explosion is a rise past the limit from below it; a model that starts above it has not exploded.
        if rules.watch_perplexity and math.exp(min(val_loss, 50)) > PERPLEXITY_EXPLOSION \
                and math.exp(min(self.best_val, 50)) < PERPLEXITY_EXPLOSION:
            return f"perplexity exploded to {math.exp(val_loss):.1f} (> {PERPLEXITY_EXPLOSION:.0f})"
        gap = (val_loss - train_loss) / max(train_loss, 1e-8)
        if self.bad_evals >= 2 and gap > rules.overfitting_threshold and self._rising():
            return (f"overfitting: validation loss rose for {self.bad_evals} evaluations and is {gap:.0%} above "
                    f"training loss (threshold {rules.overfitting_threshold:.0%})")
        if self.bad_evals >= rules.patience:
            return f"validation loss did not improve for {self.bad_evals} evaluations (patience {rules.patience})"
        return None

    def _rising(self) -> bool:
        recent = [h.get("monitored", h["val_loss"]) for h in self.history[-3:]]
        return len(recent) >= 2 and all(b >= a for a, b in zip(recent, recent[1:], strict=False))

    def state(self) -> dict:
        return {"best_val": self.best_val, "best_step": self.best_step, "bad_evals": self.bad_evals,
                "history": self.history, "rules": asdict(self.rules)}

    def load_state(self, state: dict) -> None:
        self.best_val = state["best_val"]
        self.best_step = state["best_step"]
        self.bad_evals = state["bad_evals"]
        self.history = state["history"]
