"""Training configuration: one dataclass whose fields are the command-line flags.

Each field's metadata carries its help text (and CLI spelling where it differs), so the
argparse parser is generated here, in one place, from the dataclass.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from training.data.formats import FORMATS
from training.errors import ConfigError
from training.launch import STRATEGIES
from training.runfile import merged_values

MODE_ALIASES = {"quality": "slow", "balanced": "medium", "quick": "fast", "nonstop": "non-stop"}
MODES = ("slow", "medium", "fast", "adaptive", "non-stop")
BITSANDBYTES_OPTIMIZERS = ("adamw_bnb_8bit", "paged_adamw_8bit")
OPTIMIZERS = ("adamw_torch", *BITSANDBYTES_OPTIMIZERS, "adafactor")
METHODS = ("lora", "qlora", "dpo", "kto")
DEFAULT_DPO_BETA = 0.1
DEFAULT_TENSORBOARD_PORT = 6006


@dataclass(frozen=True)
class ModePreset:
    """How a mode shapes training."""

    lr_multiplier: float
    epochs: float
    evals_per_epoch: int
    description: str


MODE_PRESETS = {
    "slow": ModePreset(0.5, 5, 1, "0.5x learning rate, 5 epochs, one evaluation per epoch"),
    "medium": ModePreset(1.0, 3, 2, "standard learning rate, 3 epochs, two evaluations per epoch"),
    "fast": ModePreset(2.0, 1, 5, "2x learning rate, 1 epoch, five evaluations per epoch"),
    "adaptive": ModePreset(1.0, 3, 2, "starts like medium; lowers the learning rate on plateaus and changes "
                                      "evaluation frequency with the validation trend"),
    "non-stop": ModePreset(0.3, math.inf, 1, "0.3x learning rate, no epoch limit, runs until interrupted"),
}


def _opt(help_text: str, default=MISSING, **extra):
    meta = {"help": help_text, **extra}
    if default is MISSING:
        return field(metadata=meta)
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every option of train.sh / train_lora.py."""

    config: Path | None = _opt("Run file (YAML or JSON) whose keys are these flags' long names; flags given here "
                               "override it. Every run saves its own as lora/run.yaml.", None)
    data: str | None = _opt("Dataset: file, directory, quoted glob, comma-separated list, NAME:SPLIT from the "
                            "Hugging Face Hub, or a datasets.save_to_disk directory; ENTRY@N weights an entry "
                            "(counts N times per epoch; a fraction trains on that share of it): "
                            "'chat.json@3,docs/*.jsonl@0.5'.", None)
    model_dir: Path | None = _opt("Installed model directory (train.sh passes it).", None)
    model_path: Path | None = _opt("Model weights directory (default: MODEL_DIR/model).", None)
    output: Path | None = _opt("Adapter output directory (default: MODEL_DIR/lora).", None)
    mode: str = _opt("Training mode: slow|medium|fast|adaptive|non-stop (aliases quality, balanced, quick).",
                     "medium")
    circular: bool = _opt("Cycle through a small dataset, growing the batch size, until perfect loss or "
                          "--max-circular-epochs.", False)
    max_circular_epochs: int = _opt("Cycle limit for --circular.", 100)
    force_epochs: bool = _opt("Train exactly the requested epochs/cycles; every auto-stop condition is off.", False)
    epochs: float | None = _opt("Epochs (default from the mode).", None)
    learning_rate: float | None = _opt("Learning rate (default 2e-4, or 3e-3 for models under 50M parameters, "
                                       "times the mode's multiplier).", None)
    batch_size: int | None = _opt("Examples per micro-batch and process; an optimizer step trains on batch size x "
                                  "accumulation x processes examples, packed without padding (default: from the "
                                  "dataset size, for about 32 steps per epoch, and memory).", None)
    gradient_accumulation_steps: int | None = _opt("Micro-batches accumulated into each optimizer step (default: 1 "
                                                   "with --batch-size, else what memory needs).", None)
    num_processes: int | None = _opt("Training processes (default: every visible GPU when there are several, else 1; "
                                     "with --device cpu, N processes over gloo).", None)
    strategy: str = _opt("Multi-process engine: ddp (each GPU holds the model), fsdp (shards it across GPUs), "
                         "deepspeed (ZeRO, see --zero-stage).", "ddp", choices=STRATEGIES)
    zero_stage: int | None = _opt("DeepSpeed ZeRO stage for --strategy deepspeed: 2 (optimizer and gradients "
                                  "sharded, default) or 3 (parameters too).", None, choices=(2, 3))
    gradient_checkpointing: str = _opt("Recompute activations in the backward pass to save memory: auto (on for "
                                       "QLoRA/8-bit and when one row would not fit), on, off.", "auto",
                                       choices=("auto", "on", "off"))
    max_seq_length: int | None = _opt("Longest sequence in tokens; longer examples are truncated "
                                      "(default: handler limit, model limit and data).", None)
    lora_r: int | None = _opt("LoRA rank (default: from model size via the handler).", None)
    lora_alpha: int | None = _opt("LoRA alpha (default: 2 x rank).", None)
    lora_dropout: float = _opt("LoRA dropout (default 0: dropout made the benchmark's real-model run slower "
                               "for no better held-out loss; docs/training.md).", 0.0)
    target_modules: str | None = _opt("Comma-separated module names to adapt, or 'all-linear' "
                                      "(default: the handler's).", None)
    method: str = _opt("lora; qlora (4-bit nf4 base weights); dpo (preference pairs, DPO loss, the base with the "
                       "adapter switched off as reference; chosen automatically for prompt/chosen/rejected data); "
                       "or kto (answers labelled desirable/undesirable; chosen automatically for labelled data).",
                       "lora", choices=METHODS)
    dpo_beta: float = _opt("DPO temperature beta: how far the tuned model may move from the reference.",
                           DEFAULT_DPO_BETA)
    kto_beta: float = _opt("KTO temperature beta (labelled answers: records with 'label' true or false).",
                           DEFAULT_DPO_BETA)
    desirable_weight: float = _opt("KTO: weight of a desirable answer's loss (TRL's desirable_weight).", 1.0)
    undesirable_weight: float = _opt("KTO: weight of an undesirable answer's loss (TRL's undesirable_weight).", 1.0)
    from_adapter: Path | None = _opt("Start from this existing LoRA adapter (e.g. ./lora after SFT, before DPO) "
                                     "instead of a fresh one.", None)
    train_vision_tower: bool = _opt("Multimodal models: also adapt the vision tower (default: the language model "
                                    "and the projector only).", False)
    use_8bit: bool = _opt("Load the base model in 8-bit (bitsandbytes).", False)
    optimizer: str = _opt("Optimizer.", "adamw_torch", choices=OPTIMIZERS)
    dataset_format: str | None = _opt("Force a dataset format instead of detecting it.", None, choices=FORMATS)
    max_examples: int | None = _opt("Use at most this many examples.", None)
    strict_data: bool = _opt("Refuse the data when a record has no answer or its answer is cut off entirely by "
                             "--max-seq-length (default: skip such records and count them in the log).", False)
    dry_run: bool = _opt("Read, detect, convert, tokenize and plan as a run would, print what would be trained "
                         "(formats, counts, the first examples with the trained parts marked) and exit without "
                         "training.", False)
    json: bool = _opt("With --dry-run: print one JSON object instead of text.", False)
    validation_split: float = _opt("Fraction of examples held out for validation.", 0.1)
    seed: int = _opt("Random seed (shuffling, split, initialisation).", 42)
    train_on_prompt: bool = _opt("Also compute loss on prompt/user tokens.", False)
    patience: int | None = _opt("Evaluations without improvement before stopping (default: 3 for QA/"
                                "instructions, 5 for text).", None)
    overfitting_threshold: float | None = _opt("Allowed validation-over-training loss gap, as a fraction "
                                               "(default: 0.10 QA/instructions, 0.20 text).", None)
    max_forgetting: float | None = _opt("Stop when the loss on the general reference (the base model's own answers "
                                        "to general prompts, measured at every evaluation) rises more than this "
                                        "fraction over the base, and keep the best adapter within it (default: 1.5, "
                                        "a rise of 150 percent; 0 measures without stopping).", None)
    replay: float = _opt("Share of every epoch's training examples taken from general replay examples (the base "
                         "model's own answers to general prompts), to keep the model general: e.g. 0.2 (SFT runs).",
                         0.0)
    no_general_reference: bool = _opt("Neither build nor watch the general reference: no forgetting signal, no "
                                      "forgetting stop, no --replay.", False)
    resume: bool = _opt("Continue from the latest checkpoint in checkpoints/.", False)
    resume_from: Path | None = _opt("Continue from this checkpoint directory.", None)
    device: str = _opt("cpu, cuda, mps or auto.", "auto", choices=("auto", "cpu", "cuda", "mps"))
    no_tensorboard: bool = _opt("Do not start TensorBoard.", False)
    tensorboard_port: int = _opt("Port for TensorBoard on localhost.", DEFAULT_TENSORBOARD_PORT)
    tensorboard_only: int | None = _opt("Only serve past training logs with TensorBoard [PORT].", None,
                                        nargs="?", const=DEFAULT_TENSORBOARD_PORT)
    skip_test: bool = _opt("Skip the before/after sample answer and the base-vs-tuned evaluation at the end.", False)
    save_total_limit: int = _opt("Numbered checkpoints to keep.", 3)

    def validate(self) -> TrainConfig:
        """Normalise aliases and refuse impossible values; returns self."""
        self.mode = MODE_ALIASES.get(self.mode, self.mode)
        if self.mode not in MODES:
            raise ConfigError(f"Unknown mode '{self.mode}'; choose one of: {', '.join(MODES)} "
                              f"(or {', '.join(MODE_ALIASES)}).")
        checks = [
            (self.tensorboard_only is None and not self.data, "--data is required (a file, directory, glob or "
                                                               "NAME:SPLIT)."),
            (self.model_dir is None and self.model_path is None, "Give --model-dir or --model-path."),
            (not 0 <= self.validation_split < 1, "--validation-split must be at least 0 and below 1."),
            (self.epochs is not None and self.epochs <= 0, "--epochs must be positive."),
            (self.learning_rate is not None and self.learning_rate <= 0, "--learning-rate must be positive."),
            (self.batch_size is not None and self.batch_size < 1, "--batch-size must be at least 1."),
            (self.gradient_accumulation_steps is not None and self.gradient_accumulation_steps < 1,
             "--gradient-accumulation-steps must be at least 1."),
            (self.num_processes is not None and self.num_processes < 1, "--num-processes must be at least 1."),
            (self.zero_stage is not None and self.strategy != "deepspeed",
             "--zero-stage is a DeepSpeed setting: add --strategy deepspeed, or leave it out."),
            (not 0 <= self.lora_dropout < 1, "--lora-dropout must be at least 0 and below 1."),
            (self.lora_alpha is not None and self.lora_alpha <= 0, "--lora-alpha must be positive (default: 2 x rank)."),
            (not 1 <= self.tensorboard_port <= 65535, "--tensorboard-port must be between 1 and 65535."),
            (self.tensorboard_only is not None and not 1 <= self.tensorboard_only <= 65535,
             "--tensorboard-only PORT must be between 1 and 65535."),
            (self.save_total_limit < 1, "--save-total-limit must be at least 1."),
            (self.mode == "non-stop" and self.circular,
             "--circular and --mode non-stop contradict each other: circular stops after --max-circular-epochs "
             "cycles, non-stop runs until interrupted; choose one."),
            (self.mode == "non-stop" and self.epochs is not None,
             "--mode non-stop has no epoch limit, so --epochs contradicts it; drop one of them."),
            (self.max_seq_length is not None and self.max_seq_length < 8, "--max-seq-length must be at least 8."),
            (self.lora_r is not None and self.lora_r < 1, "--lora-r must be at least 1."),
            (self.max_circular_epochs < 1, "--max-circular-epochs must be at least 1."),
            (self.max_examples is not None and self.max_examples < 1, "--max-examples must be at least 1."),
            (self.patience is not None and self.patience < 1, "--patience must be at least 1."),
            (self.overfitting_threshold is not None and self.overfitting_threshold <= 0,
             "--overfitting-threshold must be positive."),
            (self.max_forgetting is not None and not self.max_forgetting >= 0,
             "--max-forgetting must be a fraction of at least 0 (0.5 = 50%; 0 measures without stopping)."),
            (not 0 <= self.replay < 1, "--replay must be at least 0 and below 1 (0.2 = a fifth of every epoch)."),
            (self.replay > 0 and self.no_general_reference,
             "--replay trains on the general reference's replay examples, which --no-general-reference turns off; "
             "drop one of them."),
            (self.method == "qlora" and self.use_8bit, "--method qlora and --use-8bit exclude each other."),
            (self.resume and self.resume_from is not None, "Give --resume or --resume-from, not both."),
            (self.dpo_beta <= 0, "--dpo-beta must be positive (default 0.1)."),
            (self.kto_beta <= 0, "--kto-beta must be positive (default 0.1)."),
            (self.desirable_weight <= 0 or self.undesirable_weight <= 0,
             "--desirable-weight and --undesirable-weight must be positive (default 1)."),
            (self.json and not self.dry_run, "--json goes with --dry-run (it prints the dry run as JSON)."),
        ]
        for failed, message in checks:
            if failed:
                raise ConfigError(message)
        return self

    @property
    def preset(self) -> ModePreset:
        return MODE_PRESETS[self.mode]

    @property
    def quantized(self) -> bool:
        """The base weights load in 4 bits (QLoRA) or 8 bits, through bitsandbytes."""
        return self.method == "qlora" or self.use_8bit

    def checkpointing(self, handler) -> bool:
        """Whether activations are recomputed in the backward pass: `on`, or `auto` on quantized weights of a
        family whose handler recommends it."""
        return self.gradient_checkpointing == "on" or (
            self.gradient_checkpointing == "auto" and self.quantized and handler.gradient_checkpointing)

    @property
    def needs_bitsandbytes(self) -> bool:
        """The run quantizes or steps an 8-bit optimizer; any other run keeps bitsandbytes out of its process."""
        return self.quantized or self.optimizer in BITSANDBYTES_OPTIMIZERS

    def resolved_paths(self) -> tuple[Path, Path, Path]:
        """(model weights, adapter output, working directory for checkpoints/logs)."""
        base = Path(self.model_dir).resolve() if self.model_dir else None
        model_path = Path(self.model_path).resolve() if self.model_path else base / "model"
        output = Path(self.output).resolve() if self.output else (base or model_path.parent) / "lora"
        workdir = base or output.parent
        return model_path, output, workdir


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per TrainConfig field."""
    parser = argparse.ArgumentParser(
        prog="train.sh",
        description="LoRA fine-tuning of the installed model. Stops before it overfits and keeps the best adapter "
                    "in ./lora.",
        epilog="Examples: ./train.sh --data 'data/*.json' --circular | ./train.sh --data data.json --mode fast",
    )
    for spec in fields(TrainConfig):
        flag = "--" + spec.name.replace("_", "-")
        meta = dict(spec.metadata)
        kwargs = {"help": meta.pop("help"), "dest": spec.name}
        if spec.type in ("bool", bool):
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = _argument_type(spec.type)
            kwargs["default"] = spec.default if spec.default is not MISSING else None
            kwargs.update(meta)
        parser.add_argument(flag, **kwargs)
    return parser


def _argument_type(annotation):
    text = str(annotation)
    if "Path" in text:
        return Path
    if "float" in text:
        return float
    if "int" in text:
        return int
    return str


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse command-line flags, over the values of the --config run file if one is given, into a validated
    TrainConfig."""
    return TrainConfig(**merged_values(build_parser(), argv)).validate()
