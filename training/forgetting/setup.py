"""What a training run does with the general reference, in the order training/run.py calls it:

1. `check_replay` refuses --replay where it cannot apply, before the model is loaded;
2. `open_reference` gets the reference once the base model is loaded (before LoRA wraps it): from the checkpoint
   a resumed run continues, else from the model directory's cache, else built by the main process; every process
   gets the main process's reference;
3. `mix_replay` adds --replay's share of replay examples to the training split (training/data/mixing.py);
4. `start_watch` sets forgetting's zero point in the monitor: the base model's loss on the reference (built with
   it), the starting adapter's for a --from-adapter run, or the checkpoint's for a resumed one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from training.autostop import Monitor
from training.data.mixing import EntryShare, add_replay
from training.errors import ConfigError
from training.forgetting.reference import CACHE_FILE, GeneralReference, build_reference, general_reference
from training.forgetting.watch import GeneralWatch
from training.launch import is_main_process
from training.outputs import STATE_FILE
from training.planning import Split

log = logging.getLogger("train")
SHARDED = ("fsdp", "deepspeed")


def rendering_for(task: str) -> str:
    """Plain prompts for a run that trains on plain text, the chat template for everything else."""
    return "plain" if task == "text" else "chat"


def off_reason(cfg, objective: str, multimodal: bool, processes: int) -> str | None:
    """Why this run does not watch the general reference, or None when it does."""
    if cfg.no_general_reference:
        return "--no-general-reference"
    if multimodal:
        return "image-text models are not watched yet"
    if objective != "sft" and processes > 1 and cfg.strategy in SHARDED:
        return f"a {objective.upper()} run under --strategy {cfg.strategy} cannot take the SFT loss of its sharded model"
    return None


def check_replay(cfg, objective: str, multimodal: bool) -> None:
    """Refuse --replay where it cannot apply (a ConfigError in one sentence)."""
    if not cfg.replay:
        return
    if objective != "sft":
        raise ConfigError(f"--replay mixes the base model's own answers into SFT training, and this run trains "
                          f"with {objective.upper()}; leave --replay out.")
    if multimodal:
        raise ConfigError("--replay is for text models; this model is multimodal, so leave --replay out.")


def open_reference(ctx, model, tokenizer, checkpoint: Path | None, device, processes: int) -> GeneralReference | None:
    """The run's general reference (None when the run does not watch one, which the log says)."""
    cfg, data = ctx.cfg, ctx.data
    reason = off_reason(cfg, data.objective.name, ctx.multimodal, processes)
    if reason:
        log.info("General reference: off (%s): forgetting is not measured.", reason)
        return None
    saved = _from_checkpoint(checkpoint)
    if saved is not None and (saved.replay or not cfg.replay):
        _log_reference(saved, checkpoint)
        return saved
    reference = None
    if is_main_process() and saved is not None:  # the checkpoint's reference, and now a replay pool for --replay
        reference = build_reference(model, tokenizer, saved.key, saved.rendering, device, True, known=saved)
        reference.origin = "checkpoint"
    elif is_main_process():
        reference = general_reference(model, tokenizer, ctx.model_path, ctx.workdir, device,
                                      rendering_for(data.task), with_replay=bool(cfg.replay))
    if processes > 1:
        reference = _shared(reference)
    _log_reference(reference, checkpoint if saved is not None else ctx.workdir / CACHE_FILE)
    return reference


def _from_checkpoint(checkpoint: Path | None) -> GeneralReference | None:
    """The reference a checkpoint's run watched (None for a fresh run, or a checkpoint from before it existed)."""
    if checkpoint is None:
        return None
    saved = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8")).get("general_reference")
    return GeneralReference.from_dict(saved, "checkpoint") if saved else None


def _shared(reference: GeneralReference | None) -> GeneralReference:
    """The main process's reference in every process (one broadcast)."""
    from accelerate.utils import broadcast_object_list

    box = [(reference.as_dict(), reference.origin) if reference is not None else None]
    broadcast_object_list(box, from_process=0)
    data, origin = box[0]
    return GeneralReference.from_dict(data, origin)


def _log_reference(reference: GeneralReference, where: Path) -> None:
    how = {"built": f"built in {reference.seconds:.1f}s (cached in {where})",
           "cache": f"read from {where}", "checkpoint": f"the one {where.name} watched"}[reference.origin]
    replay = f", and {len(reference.replay)} replay prompts" if reference.replay else ""
    log.info("General reference: the base model's own greedy answers to %d general prompts (%s answer tokens, %s "
             "rendering%s), %s; the base model's loss on it: %.4f.", len(reference.watch), f"{reference.tokens:,}",
             reference.rendering, replay, how, reference.base_loss)


def mix_replay(split: Split, shares: list[EntryShare], reference: GeneralReference | None, fraction: float,
               seed: int, max_length: int) -> tuple[Split, list[EntryShare]]:
    """The training split with --replay's share of replay examples (unchanged without --replay)."""
    if not fraction or reference is None:
        return split, shares
    return add_replay(split, shares, reference.replay_examples(max_length), fraction, seed)


def start_watch(monitor: Monitor, reference: GeneralReference | None, trainer, start, resumed: Path | None,
                force_reason: str | None) -> GeneralWatch | None:
    """The watch the trainer evaluates (None without a reference), with forgetting's zero point set, and the
    forgetting rule logged. `force_reason` names what turned auto-stop off (None when it is on)."""
    if reference is None:
        return None
    watch = trainer.general = GeneralWatch(reference)
    if resumed is not None and monitor.general_zero is not None:
        origin = f"{monitor.general_origin}, as the checkpoint measured it"
    elif start is not None and resumed is None:
        monitor.general_zero, monitor.general_origin = watch.loss(trainer), "the starting adapter"
        watch.measured_at, origin = None, monitor.general_origin  # the first evaluation still measures
    else:
        monitor.general_zero, monitor.general_origin = reference.base_loss, "the base model"
        origin = monitor.general_origin
    limit = monitor.rules.max_forgetting
    if force_reason or limit <= 0:
        rule = (f"measured, never stops ({force_reason or '--max-forgetting 0'}): at the first and last evaluations "
                "and a few between, within about a tenth of the training's cost")
    else:
        rule = f"measured at every evaluation; stops when it rises more than {limit:.0%} over its zero point " \
               "(--max-forgetting)"
    log.info("Forgetting: the general reference's loss, zero point %.4f (%s); %s.", monitor.general_zero, origin,
             rule)
    return watch
