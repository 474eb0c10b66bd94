"""The training loop on accelerate: optimizer steps over the plan's steps, token-weighted losses,
evaluations (or training-loss checks when there is no validation data) with the general reference's loss
beside them when the run watches forgetting, auto-stop, checkpoints, adaptive changes, and a clean stop on
Ctrl+C/SIGTERM agreed by every process.

The loop knows nothing about formats or files: it gets tokenized examples, a plan and an objective
(batching.SFTObjective by default: token-weighted cross-entropy; preference.PreferenceObjective: DPO,
each step a mean over pairs). An objective's loss module returns (loss sum, weight) or
(loss sum, weight, statistics summed like the loss); the loop reduces all three over micro-batches and
processes and logs each statistic divided by the weight.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field

from training.batching import epoch_steps
from training.checkpointing import copy_adapter, install_hooks, load_checkpoint, save_adapter_only, save_checkpoint
from training.launch import device_name
from training.modeling import ModelLoadError
from training.objectives.sft import SFTObjective
from training.outputs import prune_checkpoints
from training.schedule import evaluation_points, examples_for_cycle, lr_factor, steps_for_epoch, total_steps

log = logging.getLogger("train")
ADAPTIVE_LR_FACTOR = 0.5
ADAPTIVE_MIN_LR_FRACTION = 0.05


@dataclass
class LoopState:
    """Everything a checkpoint needs to resume."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    step_in_epoch: int = 0
    evals: int = 0
    elapsed: float = 0.0
    train_seconds: float = 0.0  # inside optimizer steps only (no evaluations, checkpoints or logging)
    examples_per_step: int = 1
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
        parameters = list(parameters)
        # the fused kernel updates every tensor in one pass (4x faster than the loop over ~400 LoRA tensors on a CPU)
        fused = all(p.device.type in ("cpu", "cuda") for p in parameters)
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0, fused=fused)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(parameters, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    try:
        import bitsandbytes as bnb
    except Exception as exc:
        raise ModelLoadError(f"--optimizer {name} needs a working bitsandbytes: {exc}") from exc
    if name == "adamw_bnb_8bit":
        return bnb.optim.AdamW8bit(parameters, lr=lr)
    return bnb.optim.PagedAdamW8bit(parameters, lr=lr)



class Trainer:
    """Runs one training session: optimizer steps over the plan, evaluations, checkpoints."""

    def __init__(self, model, plan, train_set: list, val_set: list | None, monitor, pad_id: int, seed: int,
                 accelerator, status=None, use_liger: bool = False, objective=None, general=None):
        self.model, self.plan, self.monitor, self.accelerator = model, plan, monitor, accelerator
        self.general = general  # training.forgetting.watch.GeneralWatch: the general reference, or None
        self.train_set, self.val_set, self.pad_id, self.seed = train_set, val_set or [], pad_id, seed
        self.writer, self.status = None, status or (lambda _line: None)
        trainable = self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.objective = objective or SFTObjective()
        loss_module = self.objective.loss_module(model, use_liger)
        self.loss_model, self.optimizer = accelerator.prepare(loss_module, make_optimizer(plan.optimizer, trainable,
                                                                                           plan.learning_rate))
        install_hooks(accelerator)
        self.state = LoopState(examples_per_step=plan.examples_per_step, evals_per_epoch=plan.evals_per_epoch)
        self.total = total_steps(plan, len(train_set))
        self.val_batches = self.objective.eval_batches(self.val_set, plan.row_length, max(1, plan.eval_rows)) \
            if self.val_set else []
        self._local_stats = None  # this process's objective statistics of the step being trained
        self._step_stats: list[float] = []  # ... summed over every process
        self.step_metrics: dict[str, float] = {}  # the objective's statistics of the last step (all processes)
        self.eval_metrics: dict[str, float] = {}  # ... and of the last evaluation
        self.stop_reason: str | None = None
        self.best_dir = plan.checkpoints / "best"
        self.resumed_fingerprint: str | None = None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    # --- one optimizer step ---------------------------------------------------------------
    def _to_device(self, batch) -> dict:
        return {k: v.to(self.accelerator.device) for k, v in self.objective.collate(batch, self.pad_id).items()}

    def _metrics(self, stats, weight: float) -> dict[str, float]:
        return {name: float(value) / max(1.0, weight) for name, value in zip(self.objective.metrics, stats,
                                                                              strict=True)}

    def train_step(self, indices: list[int]) -> float:
        """One optimizer step over these examples; returns this process's summed loss (labelled tokens, or
        pairs for DPO); the objective's statistics of the step are kept in `_local_stats`."""
        import torch

        acc, plan, objective = self.accelerator, self.plan, self.objective
        scale = plan.processes * plan.accumulation / max(1, objective.weight(indices, self.train_set))
        local = torch.zeros((), device=acc.device)
        self._local_stats = torch.zeros(len(objective.metrics), device=acc.device)
        for rows, real in objective.micro_batches(indices, self.train_set, plan.accumulation, plan.processes,
                                                  acc.process_index, plan.row_length):
            with acc.accumulate(self.loss_model):
                loss_sum, _count, *stats = self.loss_model(**self._to_device(rows))
                weight = 1.0 if real else 0.0
                # accelerate divides by the accumulation steps and DDP averages over processes: `scale` undoes
                # both, so the gradient is that of the mean loss over every labelled token (or pair) of the step
                acc.backward(loss_sum * (weight * scale))
                local += loss_sum.detach().float() * weight
                if stats:
                    self._local_stats += stats[0].detach().float() * weight
                if acc.sync_gradients:
                    acc.clip_grad_norm_(self.trainable, 1.0)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
        return local

    def _agree(self, local_loss, stop_requested: bool) -> tuple[float, bool]:
        """(the step's loss sum over all processes, whether any process was asked to stop): one all-reduce,
        which also sums the objective's statistics (kept, summed, in `_step_stats`)."""
        import torch

        stats = self._local_stats if self._local_stats is not None else torch.zeros(0, device=local_loss.device)
        packed = torch.cat([torch.stack([local_loss.float(), torch.tensor(float(stop_requested),
                                                                          device=local_loss.device)]), stats])
        total = self.accelerator.reduce(packed, reduction="sum") if self.plan.processes > 1 else packed
        self._step_stats = total[2:].tolist()
        return float(total[0]), bool(total[1] > 0)

    def _set_lr(self) -> float:
        lr = self.plan.learning_rate * self.state.lr_scale * lr_factor(self.plan, self.state.step, self.total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    # --- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> float | None:
        """Mean loss over the validation set, token- (or pair-) weighted; None without validation data.
        The objective's statistics of this evaluation go to `eval_metrics`."""
        import torch

        if not self.val_batches:
            return None
        batches, n = self.val_batches, self.plan.processes
        rounds = math.ceil(len(batches) / n)  # every process runs as many forward passes as the others
        totals = torch.zeros(2 + len(self.objective.metrics), device=self.accelerator.device)
        self.loss_model.eval()
        with torch.no_grad():
            for r in range(rounds):
                index = r * n + self.accelerator.process_index
                rows = batches[index] if index < len(batches) else batches[0]
                loss_sum, count, *stats = self.loss_model(**self._to_device(rows))
                if index < len(batches):
                    totals += torch.cat([torch.stack([loss_sum.float(), count.float()]), *[s.float() for s in stats]])
        self.loss_model.train()
        if n > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        self.eval_metrics = self._metrics(totals[2:].tolist(), float(totals[1]))
        return float(totals[0] / totals[1].clamp(min=1))

    # --- the loop -------------------------------------------------------------------------
    def run(self, stop: StopSignal, progress=None) -> str:
        """Train until the plan ends, auto-stop fires or a signal arrives; returns the stop reason."""
        self.loss_model.train()
        started = time.monotonic() - self.state.elapsed
        window_loss, window_tokens = 0.0, 0
        window_stats = [0.0] * len(self.objective.metrics)
        count = len(self.train_set)
        while self.stop_reason is None:
            if self.finished():
                self.stop_reason = self._finished_reason()
                break
            epoch = self.state.epoch
            self.state.examples_per_step = examples_for_cycle(self.plan, epoch, count)
            steps = epoch_steps(count, self.state.examples_per_step, self.seed, epoch)
            limit = steps_for_epoch(self.plan, epoch, count)
            points = evaluation_points(limit, self.state.evals_per_epoch)
            for index in range(self.state.step_in_epoch, limit):
                lr = self._set_lr()
                step_started = time.perf_counter()
                step_loss, stopping = self._agree(self.train_step(steps[index]), stop.requested is not None)
                self.state.train_seconds += time.perf_counter() - step_started
                tokens = self.objective.weight(steps[index], self.train_set)
                self.state.step += 1
                self.state.step_in_epoch = index + 1
                self.state.tokens += sum(len(self.train_set[i].input_ids) for i in steps[index])
                window_loss += step_loss
                window_tokens += tokens
                window_stats = [w + s for w, s in zip(window_stats, self._step_stats, strict=True)]
                self.step_metrics = self._metrics(self._step_stats, tokens)
                self._log_step(step_loss / max(1, tokens), lr)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{step_loss / max(1, tokens):.4f}", epoch=epoch + 1)
                if index + 1 in points or stopping:
                    self.state.elapsed = time.monotonic() - started
                    self._evaluation(window_loss / max(1, window_tokens), self._metrics(window_stats, window_tokens))
                    window_loss, window_tokens = 0.0, 0
                    window_stats = [0.0] * len(self.objective.metrics)
                if stopping and self.stop_reason is None:
                    self.stop_reason = f"interrupted by {stop.requested or 'a signal to another process'}"
                if self.stop_reason:
                    break
            else:
                self.state.epoch += 1
                self.state.step_in_epoch = 0
        self.state.elapsed = time.monotonic() - started
        return self.stop_reason

    def finished(self) -> bool:
        """True when the plan's epochs/cycles are all done (nothing left for a resume to train)."""
        if math.isinf(self.plan.epochs):
            return False
        last = math.ceil(self.plan.epochs) - 1
        epoch = self.state.epoch
        return epoch > last or (epoch == last and
                                self.state.step_in_epoch >= steps_for_epoch(self.plan, last, len(self.train_set)))

    def _finished_reason(self) -> str:
        if self.plan.circular:
            return f"completed {math.ceil(self.plan.epochs)} circular cycles (--max-circular-epochs)"
        return f"completed {self.plan.epochs:g} epoch(s)"

    def _log_step(self, loss: float, lr: float) -> None:
        self.state.history.append({"step": self.state.step, "train_loss": loss, "lr": lr,
                                   **{f"train_{k}": v for k, v in self.step_metrics.items()}})
        if self.writer:
            self.writer.add_scalar("train/loss", loss, self.state.step)
            for name, value in self.step_metrics.items():
                self.writer.add_scalar(f"train/{name}", value, self.state.step)
            self.writer.add_scalar("train/learning_rate", lr, self.state.step)
            self.writer.add_scalar("train/tokens_seen", self.state.tokens, self.state.step)

    def _evaluation(self, train_loss: float, train_metrics: dict[str, float] | None = None) -> None:
        """An evaluation on the validation set, or a check of the running training loss when there is none."""
        val_loss = self.evaluate()
        measure = self.general is not None and self.general.due(self, final=self.finished())
        general_loss = self.general.loss(self) if measure else None
        self.state.evals += 1
        is_best, reason = self.monitor.update(self.state.step, train_loss, val_loss, general_loss)
        entry = {"step": self.state.step, "train_loss": train_loss, "epoch": self.state.epoch + 1,
                 **{f"window_{k}": v for k, v in (train_metrics or {}).items()}}
        if val_loss is not None:
            entry["val_loss"] = val_loss
            entry.update({f"val_{k}": v for k, v in self.eval_metrics.items()})
        if general_loss is not None:
            entry.update(general_loss=general_loss, forgetting=self.monitor.forgetting(general_loss))
            if self.writer:
                self.writer.add_scalar("eval/general_loss", general_loss, self.state.step)
                if entry["forgetting"] is not None:
                    self.writer.add_scalar("eval/forgetting", entry["forgetting"], self.state.step)
        self.state.history.append(entry)
        if self.writer and val_loss is not None:
            self.writer.add_scalar("eval/loss", val_loss, self.state.step)
            for name, value in self.eval_metrics.items():
                self.writer.add_scalar(f"eval/{name}", value, self.state.step)
            if self.monitor.rules.watch_perplexity:
                self.writer.add_scalar("eval/perplexity", math.exp(min(val_loss, 50)), self.state.step)
        if self.main:
            self.status(self._status_line(train_loss, val_loss, self.eval_metrics if val_loss is not None
                                          else train_metrics or {}))
        self.save_checkpoint(is_best)
        if self.plan.adaptive:
            self._adapt(is_best)
        if reason:
            self.stop_reason = reason

    def _status_line(self, train_loss: float, val_loss: float | None, metrics: dict[str, float]) -> str:
        elapsed = int(self.state.elapsed)
        parts = [f"Evaluation #{self.state.evals}", f"Step {self.state.step}",
                 f"Time: {elapsed // 3600:02d}:{elapsed % 3600 // 60:02d}:{elapsed % 60:02d}",
                 f"Train Loss: {train_loss:.4f}"]
        if val_loss is not None:
            parts.append(f"Val Loss: {val_loss:.4f}")
        if self.monitor.rules.watch_perplexity:
            parts.append(f"Perplexity: {math.exp(min(train_loss if val_loss is None else val_loss, 50)):.1f}")
        if "reward_accuracy" in metrics:
            parts += [f"Reward Acc: {metrics['reward_accuracy']:.0%}", f"Margin: {metrics['reward_margin']:.3f}"]
        forgetting = self.state.history[-1].get("forgetting") if self.state.history else None
        if forgetting is not None:
            parts.append(f"General: {forgetting:+.1%}")
        parts += [f"Best {'Val' if val_loss is not None else 'Train'}: {self.monitor.best_val:.4f}",
                  f"Patience: {self.monitor.bad_evals}/{self.monitor.rules.patience}"]
        return " | ".join(parts)

    def _adapt(self, improved: bool) -> None:
        """Adaptive mode: halve the LR on a plateau; evaluate more often when worse, less when improving."""
        recent = [h.get("monitored", h["val_loss"]) for h in self.monitor.history[-3:]]
        if not improved and self.monitor.bad_evals >= 1 and self.state.lr_scale > ADAPTIVE_MIN_LR_FRACTION:
            self.state.lr_scale *= ADAPTIVE_LR_FACTOR
            watched = "validation" if self.val_batches else "training"
            self._change(f"{watched} loss plateaued ({recent[-1]:.4f} vs best {self.monitor.best_val:.4f}): "
                         f"learning rate x{ADAPTIVE_LR_FACTOR} -> {self.plan.learning_rate * self.state.lr_scale:.2e}")
            if self.state.evals_per_epoch < 8:
                self.state.evals_per_epoch *= 2
                self._change(f"evaluating more often: {self.state.evals_per_epoch} per epoch")
        elif len(recent) == 3 and recent[0] > recent[1] > recent[2] and self.state.evals_per_epoch > 1:
            self.state.evals_per_epoch //= 2
            watched = "validation" if self.val_batches else "training"
            self._change(f"{watched} loss falling steadily: evaluating less often, "
                         f"{self.state.evals_per_epoch} per epoch")

    def _change(self, message: str) -> None:
        self.state.changes.append(f"step {self.state.step}: {message}")
        if self.main:
            log.info("Adaptive: %s", message)

    # --- checkpoints ----------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """What trainer_state.json holds: the loop, the monitor, the data's fingerprint and the general reference
        (so a resumed run compares with the same reference and zero point)."""
        state = {"loop": self.state.__dict__, "monitor": self.monitor.state(),
                 "data_fingerprint": self.plan.data_fingerprint}
        if self.general is not None:
            state["general_reference"] = self.general.reference.as_dict()
        return state

    def save_checkpoint(self, is_best: bool) -> None:
        """checkpoint-<step> (complete or absent), best/ when it is the best so far, older ones pruned."""
        directory = self.plan.checkpoints / f"checkpoint-{self.state.step}"
        save_checkpoint(self.accelerator, self.model, directory, self.checkpoint_state(), self.plan.chat_template)
        if self.main:
            if is_best:
                copy_adapter(directory, self.best_dir)
            prune_checkpoints(self.plan.checkpoints, self.plan.save_total_limit)
        self.accelerator.wait_for_everyone()

    def save_last(self):
        """The adapter as training left it, in checkpoints/last (main process)."""
        last = self.plan.checkpoints / "last"
        if self.main:
            save_adapter_only(self.model, last, self.plan.chat_template)
        self.accelerator.wait_for_everyone()
        return last

    def load_checkpoint(self, directory) -> None:
        """Restore adapter weights, optimizer, RNG, loop position and monitor from a checkpoint."""
        state = load_checkpoint(self.accelerator, self.model, directory, device_name(self.accelerator.device))
        for key, value in state["loop"].items():
            if hasattr(self.state, key):
                setattr(self.state, key, value)
        self.monitor.load_state(state["monitor"])
        self.resumed_fingerprint = state.get("data_fingerprint")
