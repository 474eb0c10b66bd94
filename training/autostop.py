"""Deciding when to stop: validation trend, train/validation gap, patience, perfect loss, perplexity explosion
and forgetting (the general reference's loss rising past --max-forgetting over its zero point, see
training/forgetting/), with thresholds that depend on the task type."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

PERPLEXITY_EXPLOSION = 100.0
MIN_IMPROVEMENT = 1e-4
# The rise of the general reference's loss over its zero point (as a fraction) that stops a run, per task type. Set
# on SmolLM2-135M-Instruct (docs/training.md): ordinary runs drift +20% (plain text) to +85% (chat SFT, three
# epochs), the quick-start answers overfitted at lr 3e-3 reach +300%; +150% stops the latter, never the former.
MAX_FORGETTING = {"qa": 1.5, "preference": 1.5, "text": 1.5}


@dataclass(frozen=True)
class StopRules:
    """Thresholds for one task type (user flags override patience and threshold)."""

    task: str
    perfect_loss: float
    overfitting_threshold: float
    patience: int
    watch_perplexity: bool
    max_forgetting: float = 0.0  # relative rise of the general reference's loss that stops; 0: measured only


def rules_for(task: str, patience: int | None = None, threshold: float | None = None,
              max_forgetting: float | None = None) -> StopRules:
    """QA/instruction: perfect 0.01, 10%, patience 3. Text: perfect 0.5, 20%, patience 5, perplexity watch.
    Forgetting: MAX_FORGETTING for the task unless `max_forgetting` is given (0 turns that stop off)."""
    if task == "text":
        return StopRules("text", 0.5, threshold or 0.20, patience or 5, True,
                         MAX_FORGETTING["text"] if max_forgetting is None else max_forgetting)
    # preference pairs (DPO) use the QA thresholds on the DPO loss (it starts at ln 2 = 0.693)
    kind = "preference" if task == "preference" else "qa"
    return StopRules(kind, 0.01, threshold or 0.10, patience or 3, False,
                     MAX_FORGETTING[kind] if max_forgetting is None else max_forgetting)


@dataclass
class Monitor:
    """Follows evaluations; `update` says whether to stop and why, and whether this one is the best."""

    rules: StopRules
    enabled: bool = True
    best_val: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    history: list[dict] = field(default_factory=list)
    general_zero: float | None = None  # the general reference's loss as training starts (forgetting's zero point)
    general_origin: str = "the base model"  # what that zero point is the loss of
    kept_outside: bool = False  # the best adapter forgot more than --max-forgetting: none stayed within it

    @property
    def stops_on_forgetting(self) -> bool:
        """Whether the forgetting rule is on (auto-stop on, a threshold, and a reference to measure)."""
        return self.enabled and self.rules.max_forgetting > 0 and bool(self.general_zero)

    def forgetting(self, general_loss: float | None) -> float | None:
        """The general reference's loss relative to its zero point (0.05: 5% higher), None when not measured."""
        if general_loss is None or not self.general_zero:
            return None
        return (general_loss - self.general_zero) / self.general_zero

    def update(self, step: int, train_loss: float, val_loss: float | None,
               general_loss: float | None = None) -> tuple[bool, str | None]:
        """(is_best, stop_reason or None) after one evaluation.

        Without validation data (`val_loss` None) the running training loss is watched instead: perfect
        loss and patience apply, the train/validation gap cannot. With the forgetting rule on, an evaluation
        whose general-reference loss rose past the threshold stops the run and is never the best, unless no
        evaluation before it was kept (then it is, as the one that forgot least, and `kept_outside` says so).
        """
        monitored = train_loss if val_loss is None else val_loss
        forgetting = self.forgetting(general_loss)
        over = self.stops_on_forgetting and forgetting is not None and forgetting > self.rules.max_forgetting
        improved = monitored < self.best_val - MIN_IMPROVEMENT
        is_best = (improved and not over) or (over and math.isinf(self.best_val))
        if is_best:
            self.best_val, self.best_step, self.bad_evals, self.kept_outside = monitored, step, 0, over
        else:
            self.bad_evals += 1
        self.history.append({"step": step, "train_loss": train_loss, "val_loss": val_loss, "monitored": monitored,
                             "general_loss": general_loss, "forgetting": forgetting})
        if not self.enabled:
            return is_best, None
        if over:
            return is_best, (f"forgetting: the loss on the general reference rose {forgetting:.0%} over "
                             f"{self.general_origin} (limit {self.rules.max_forgetting:.0%}, --max-forgetting)")
        return is_best, self._stop_reason(train_loss, val_loss)

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
                "history": self.history, "rules": asdict(self.rules), "general_zero": self.general_zero,
                "general_origin": self.general_origin, "kept_outside": self.kept_outside}

    def load_state(self, state: dict) -> None:
        self.best_val = state["best_val"]
        self.best_step = state["best_step"]
        self.bad_evals = state["bad_evals"]
        self.history = state["history"]
        self.general_zero = state.get("general_zero")  # None in checkpoints from before the general reference
        self.general_origin = state.get("general_origin", self.general_origin)
        self.kept_outside = state.get("kept_outside", False)
