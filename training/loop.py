"""The training loop: epochs or circular cycles over packed rows, evaluations, auto-stop,
checkpoints, adaptive changes, and a clean stop on Ctrl+C/SIGTERM."""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from .autostop import Monitor
from .outputs import STATE_FILE, prune_checkpoints, save_adapter_dir
from .packing import PackedRow, collate, useful_tokens

log = logging.getLogger("train")
WARMUP_FRACTION = 0.05
CIRCULAR_GROWTH_EVERY = 5  # cycles between batch-size increases
CIRCULAR_MAX_GROWTH = 4  # the batch grows to at most 4x its starting size
ADAPTIVE_LR_FACTOR = 0.5
ADAPTIVE_MIN_LR_FRACTION = 0.05


@dataclass
class Plan:
    """What the loop does, decided before it starts."""

    epochs: float  # math.inf for non-stop
    batch_size: int
    accumulation: int
    learning_rate: float
    evals_per_epoch: int
    circular: bool
    adaptive: bool
    constant_lr: bool
    optimizer: str
    precision: str
    device: str
    checkpoints: Path
    save_total_limit: int
    chat_template: str | None = None
    max_batch_size: int = 0  # circular growth stops here (what fits in memory); 0 = no cap
    data_fingerprint: str | None = None  # saved in checkpoints so a resume on other data is noticed


@dataclass
class LoopState:
    """Everything a checkpoint needs to resume."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    evals: int = 0
    elapsed: float = 0.0
    batch_size: int = 1
    evals_per_epoch: int = 1
    lr_scale: float = 1.0
    tokens: int = 0
    history: list[dict] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)


class StopSignal:
    """Ctrl+C / SIGTERM: the first asks for a clean stop (adapter saved), the second aborts."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, _frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        log.warning("%s received: finishing this step and saving the adapter (again to abort).", self.requested)


def make_optimizer(name: str, parameters, lr: float):
    """The optimizer called `name` over the trainable parameters."""
    import torch

    if name == "adamw_torch":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    try:
        import bitsandbytes as bnb
    except Exception as exc:
        from .modeling import ModelLoadError

        raise ModelLoadError(f"--optimizer {name} needs a working bitsandbytes: {exc}") from exc
    if name == "adamw_bnb_8bit":
        return bnb.optim.AdamW8bit(parameters, lr=lr)
    return bnb.optim.PagedAdamW8bit(parameters, lr=lr)


def batch_size_for_cycle(plan: Plan, cycle: int, rows: int) -> int:
    """Circular mode grows the batch by its starting size every few cycles, up to 4x (and the row count)."""
    if not plan.circular:
        return plan.batch_size
    growth = min(cycle // CIRCULAR_GROWTH_EVERY, CIRCULAR_MAX_GROWTH - 1)
    size = plan.batch_size * (1 + growth)
    if plan.max_batch_size:
        size = min(size, max(plan.batch_size, plan.max_batch_size))
    return max(1, min(size, rows))


def total_steps(plan: Plan, rows: int) -> int:
    """Optimizer steps the plan will take if nothing stops it (for the LR schedule)."""
    if math.isinf(plan.epochs):
        return 0
    steps = 0
    whole = int(plan.epochs)
    for epoch in range(whole):
        steps += math.ceil(rows / batch_size_for_cycle(plan, epoch, rows))
    steps += math.ceil((plan.epochs - whole) * math.ceil(rows / batch_size_for_cycle(plan, whole, rows)))
    return max(1, math.ceil(steps / plan.accumulation))


def lr_factor(plan: Plan, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% (constant for non-stop and adaptive)."""
    warmup = max(1, int(WARMUP_FRACTION * total)) if total else 10
    if step < warmup:
        return (step + 1) / warmup
    if plan.constant_lr or not total:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """Runs one training session over packed rows."""

    def __init__(self, model, plan: Plan, train_rows: list[PackedRow], val_rows: list[PackedRow], monitor: Monitor,
                 pad_id: int, seed: int, writer=None, status=None):
        import torch

        self.model, self.plan, self.monitor = model, plan, monitor
        self.train_rows, self.val_rows, self.pad_id, self.seed = train_rows, val_rows, pad_id, seed
        self.writer, self.status = writer, status or (lambda _line: None)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(plan.optimizer, trainable, plan.learning_rate)
        self.state = LoopState(batch_size=plan.batch_size, evals_per_epoch=plan.evals_per_epoch)
        self.total = total_steps(plan, len(train_rows))
        use_scaler = plan.device == "cuda" and plan.precision == "float16"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.stop_reason: str | None = None
        self.best_dir = plan.checkpoints / "best"
        self.resumed_fingerprint: str | None = None

    # --- batches and steps -------------------------------------------------------------
    def _autocast(self):
        import contextlib

        import torch

        if self.plan.device == "cuda" and self.plan.precision in ("float16", "bfloat16"):
            return torch.autocast("cuda", dtype=getattr(torch, self.plan.precision))
        return contextlib.nullcontext()

    def _forward(self, rows: list[PackedRow]):
        batch = {k: v.to(self.plan.device) for k, v in collate(rows, self.pad_id).items()}
        with self._autocast():
            return self.model(**batch, use_cache=False).loss

    def _set_lr(self) -> float:
        lr = self.plan.learning_rate * self.state.lr_scale * lr_factor(self.plan, self.state.step, self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def evaluate(self) -> float:
        """Token-weighted mean loss over the validation rows."""
        import torch

        self.model.eval()
        total_loss, total_tokens = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(self.val_rows), max(1, self.state.batch_size)):
                rows = self.val_rows[start:start + max(1, self.state.batch_size)]
                tokens = useful_tokens(rows)
                if tokens:
                    total_loss += self._forward(rows).item() * tokens
                    total_tokens += tokens
        self.model.train()
        return total_loss / max(1, total_tokens)

    # --- the loop -------------------------------------------------------------------------
    def run(self, stop: StopSignal, progress=None) -> str:
        """Train until the plan ends, auto-stop fires or a signal arrives; returns the stop reason."""
        import torch

        self.model.train()
        started = time.monotonic() - self.state.elapsed
        window_loss, window_tokens = 0.0, 0
        micro = 0
        while self.stop_reason is None:
            epoch = self.state.epoch
            if self.finished():
                self.stop_reason = self._finished_reason()
                break
            self.state.batch_size = batch_size_for_cycle(self.plan, epoch, len(self.train_rows))
            order = list(range(len(self.train_rows)))
            random.Random(self.seed + epoch).shuffle(order)
            batches = [order[i:i + self.state.batch_size] for i in range(0, len(order), self.state.batch_size)]
            limit = self._batches_in(epoch)
            eval_every = max(1, limit // max(1, self.state.evals_per_epoch))
            for index in range(self.state.batch_in_epoch, limit):
                rows = [self.train_rows[i] for i in batches[index]]
                lr = self._set_lr()
                loss = self._forward(rows)
                tokens = useful_tokens(rows)
                scaled = loss / self.plan.accumulation
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                micro += 1
                if micro % self.plan.accumulation == 0 or index == limit - 1:
                    self._optimizer_step(torch)
                self.state.step += 1
                self.state.batch_in_epoch = index + 1
                self.state.tokens += sum(r.length for r in rows)
                window_loss += loss.item() * tokens
                window_tokens += tokens
                self._log_step(loss.item(), lr)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch + 1)
                last_of_epoch = index == limit - 1
                if (index + 1) % eval_every == 0 or last_of_epoch or stop.requested:
                    train_loss = window_loss / max(1, window_tokens)
                    window_loss, window_tokens = 0.0, 0
                    self.state.elapsed = time.monotonic() - started
                    self._evaluation(train_loss)
                if stop.requested and self.stop_reason is None:
                    self.stop_reason = f"interrupted by {stop.requested}"
                if self.stop_reason:
                    break
            else:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
        self.state.elapsed = time.monotonic() - started
        return self.stop_reason

    def _batches_in(self, epoch: int) -> int:
        """Batches epoch `epoch` trains on (fewer in a final fractional epoch)."""
        rows = len(self.train_rows)
        batches = math.ceil(rows / batch_size_for_cycle(self.plan, epoch, rows))
        if self.plan.epochs - epoch < 1:
            return max(1, math.ceil((self.plan.epochs - epoch) * batches))
        return batches

    def finished(self) -> bool:
        """True when the plan's epochs/cycles are all done (nothing left for a resume to train)."""
        if math.isinf(self.plan.epochs):
            return False
        last = math.ceil(self.plan.epochs) - 1
        epoch = self.state.epoch
        return epoch > last or (epoch == last and self.state.batch_in_epoch >= self._batches_in(last))

    def _finished_reason(self) -> str:
        if self.plan.circular:
            return f"completed {math.ceil(self.plan.epochs)} circular cycles (--max-circular-epochs)"
        return f"completed {self.plan.epochs:g} epoch(s)"

    def _optimizer_step(self, torch) -> None:
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _log_step(self, loss: float, lr: float) -> None:
        entry = {"step": self.state.step, "train_loss": loss, "lr": lr}
        self.state.history.append(entry)
        if self.writer:
            self.writer.add_scalar("train/loss", loss, self.state.step)
            self.writer.add_scalar("train/learning_rate", lr, self.state.step)
            self.writer.add_scalar("train/tokens_seen", self.state.tokens, self.state.step)

    def _evaluation(self, train_loss: float) -> None:
        val_loss = self.evaluate()
        self.state.evals += 1
        is_best, reason = self.monitor.update(self.state.step, train_loss, val_loss)
        self.state.history.append({"step": self.state.step, "train_loss": train_loss, "val_loss": val_loss,
                                   "epoch": self.state.epoch + 1})
        if self.writer:
            self.writer.add_scalar("eval/loss", val_loss, self.state.step)
            if self.monitor.rules.watch_perplexity:
                self.writer.add_scalar("eval/perplexity", math.exp(min(val_loss, 50)), self.state.step)
        self.status(self._status_line(train_loss, val_loss))
        self.save_checkpoint(is_best)
        if self.plan.adaptive:
            self._adapt(is_best)
        if reason:
            self.stop_reason = reason

    def _status_line(self, train_loss: float, val_loss: float) -> str:
        elapsed = int(self.state.elapsed)
        parts = [f"Evaluation #{self.state.evals}", f"Time: {elapsed // 3600:02d}:{elapsed % 3600 // 60:02d}:"
                 f"{elapsed % 60:02d}", f"Train Loss: {train_loss:.4f}", f"Val Loss: {val_loss:.4f}"]
        if self.monitor.rules.watch_perplexity:
            parts.append(f"Perplexity: {math.exp(min(val_loss, 50)):.1f}")
        parts += [f"Best Val: {self.monitor.best_val:.4f}",
                  f"Patience: {self.monitor.bad_evals}/{self.monitor.rules.patience}"]
        return " | ".join(parts)

    def _adapt(self, improved: bool) -> None:
        """Adaptive mode: halve the LR on a plateau; evaluate more often when worse, less when improving."""
        recent = [h["val_loss"] for h in self.monitor.history[-3:]]
        if not improved and self.monitor.bad_evals >= 1 and self.state.lr_scale > ADAPTIVE_MIN_LR_FRACTION:
            self.state.lr_scale *= ADAPTIVE_LR_FACTOR
            self._change(f"validation loss plateaued ({recent[-1]:.4f} vs best {self.monitor.best_val:.4f}): "
                         f"learning rate x{ADAPTIVE_LR_FACTOR} -> {self.plan.learning_rate * self.state.lr_scale:.2e}")
            if self.state.evals_per_epoch < 8:
                self.state.evals_per_epoch *= 2
                self._change(f"evaluating more often: {self.state.evals_per_epoch} per epoch")
        elif len(recent) == 3 and recent[0] > recent[1] > recent[2] and self.state.evals_per_epoch > 1:
            self.state.evals_per_epoch //= 2
            self._change(f"validation loss falling steadily: evaluating less often, "
                         f"{self.state.evals_per_epoch} per epoch")

    def _change(self, message: str) -> None:
        self.state.changes.append(f"step {self.state.step}: {message}")
        log.info("Adaptive: %s", message)

    # --- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, is_best: bool) -> None:
        import torch

        directory = self.plan.checkpoints / f"checkpoint-{self.state.step}"
        save_adapter_dir(self.model, directory, chat_template=self.plan.chat_template)
        torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        state = {"loop": self.state.__dict__, "monitor": self.monitor.state(),
                 "data_fingerprint": self.plan.data_fingerprint}
        (directory / STATE_FILE).write_text(json.dumps(state, default=str), encoding="utf-8")
        if is_best:
            import shutil

            shutil.rmtree(self.best_dir, ignore_errors=True)
            shutil.copytree(directory, self.best_dir, ignore=shutil.ignore_patterns("optimizer.pt"))
        prune_checkpoints(self.plan.checkpoints, self.plan.save_total_limit)

    def save_last(self) -> Path:
        last = self.plan.checkpoints / "last"
        import shutil

        shutil.rmtree(last, ignore_errors=True)
        save_adapter_dir(self.model, last, chat_template=self.plan.chat_template)
        return last

    def load_checkpoint(self, directory: Path) -> None:
        """Restore adapter weights, optimizer, loop position and monitor from a checkpoint."""
        import torch
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(directory / "adapter_model.safetensors"), device=self.plan.device)
        set_peft_model_state_dict(self.model, weights)
        optimizer_file = directory / "optimizer.pt"
        if optimizer_file.is_file():
            self.optimizer.load_state_dict(torch.load(optimizer_file, map_location=self.plan.device))
        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        for key, value in state["loop"].items():
            setattr(self.state, key, value)
        self.monitor.load_state(state["monitor"])
        self.resumed_fingerprint = state.get("data_fingerprint")
