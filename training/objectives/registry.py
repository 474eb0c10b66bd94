"""The registry of training objectives. Adding one (ORPO, KTO, a reward model) is a module implementing
training.objectives.base.Objective plus one line in OBJECTIVES; objectives are asked in order and SFT, which
takes any data, comes last."""

from __future__ import annotations

from training.objectives.base import Objective
from training.objectives.dpo import PreferenceObjective
from training.objectives.kto import KTOObjective
from training.objectives.sft import SFTObjective

OBJECTIVES: tuple[type, ...] = (KTOObjective, PreferenceObjective, SFTObjective)


def objective_for(cfg, examples: list, multimodal: bool) -> Objective:
    """The objective this run trains with, chosen from the data and --method."""
    for objective in OBJECTIVES:
        if objective.wants(cfg, examples, multimodal):
            return objective.from_config(cfg)
    raise AssertionError("SFT takes any data")  # unreachable: SFTObjective.wants is always true
