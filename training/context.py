"""One training run as one value: what the run was asked, the model it trains, its data and its plan.

training/run.py fills it in as the run goes (data, then plan, LoRA shape, stop rules and the general reference's
watch) and hands it to whatever needs the run as a whole (adapter_info.json, the report), instead of tuples and
long argument lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handlers import handler_for_config
from handlers.base import ModelHandler
from training.autostop import StopRules
from training.config import TrainConfig
from training.objectives.base import Objective
from training.resume import LoraShape
from training.schedule import Plan


@dataclass
class RunData:
    """The run's data, read, detected and tokenized for its objective."""

    sources: list  # training.data.sources.SourceRecords
    examples: list  # training.data.formats.Example
    tokenizer: Any
    tokenized: list  # what the objective trains on (Tokenized examples, tokenized pairs)
    objective: Objective
    fallback_used: bool  # the handler's chat template stood in for a missing one (saved with the adapter)
    task: str  # "text", "qa" or "preference" (training.data.formats.task_type)
    formats: list[str]
    truncated: int  # examples cut at the sequence length


@dataclass
class RunContext:
    """A training run: its configuration, the installed model and what has been decided so far."""

    cfg: TrainConfig
    model_path: Path
    output: Path
    workdir: Path
    info: dict  # the model directory's model_info.json ({} when absent)
    model_config: dict  # the model's config.json
    handler: ModelHandler
    started: float  # time.monotonic() at the start
    data: RunData | None = None
    plan: Plan | None = None
    lora: LoraShape | None = None
    rules: StopRules | None = None
    general: Any = None  # training.forgetting.watch.GeneralWatch: the general reference the run watches, or None

    @classmethod
    def open(cls, cfg: TrainConfig, model_path: Path, output: Path, workdir: Path, started: float) -> RunContext:
        """The context of a run on the model in `model_path`, installed in `workdir`."""
        model_config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
        return cls(cfg, model_path, output, workdir, _model_info(workdir), model_config,
                   handler_for_config(model_config), started)

    @property
    def multimodal(self) -> bool:
        return self.handler.is_multimodal(self.model_config)


def _model_info(workdir: Path) -> dict:
    try:
        return json.loads((workdir / "model_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
