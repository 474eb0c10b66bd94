#!/usr/bin/env python3
"""One-shot GPU check: our LoRA engine against transformers.Trainer + PEFT, Liger's fused loss, QLoRA, and the
server's continuous batching, on one NVIDIA GPU with no network, in under 9 minutes, as ONE markdown table.

    bash bench/gpu_check.sh                  # everything (on the GPU machine; bench/GPU_CHECK.md says how)
    bash bench/gpu_check.sh --dry-run        # the plan: parts, commands, time budgets, wheels (any machine)
    bash bench/gpu_check.sh --fetch-wheels   # download the wheels that travel (a machine with network)
    bash bench/gpu_check.sh --parts lora8b,qlora8b

Parts, in the order they run (each in its own process, with its own time limit: one that fails, runs out of
memory or time gets a row saying so and the others still run):
- setup: versions and the GPU's bf16 peak (an 8192^3 matrix product), the tokenizer and a fixed synthetic dataset
  (bench/gpu/data.py), and two model directories with random bf16 weights of real shapes (bench/gpu/model.py):
  SmolLM2-135M and Llama-3-8B;
- smol: SmolLM2-135M shape, our engine (train_lora.py, what ./train.sh runs) vs Trainer + PEFT;
- serve: SmolLM2-135M shape, `python -m serving` (what start.sh runs) with continuous batching, 8 clients vs 1;
- lora8b: Llama-3-8B shape, our engine vs Trainer + PEFT;
- liger8b: Llama-3-8B shape, our engine with liger-kernel on its path (the engine uses Liger's fused linear
  cross-entropy on CUDA whenever liger-kernel imports; there is no flag);
- qlora8b: Llama-3-8B shape, our engine with --method qlora (bitsandbytes nf4).

Each training contender trains LoRA r=16, alpha 32, dropout 0.05 on every linear layer, lr 2e-4, on the same
data, for `cap` seconds after 3 warm-up steps (or one epoch, whichever ends first). tokens/s counts the tokens
of the examples trained (prompt and answer; padding never) over the timed steps; peak memory is torch's peak
allocated in that process; MFU follows bench/gpu/model.py (its docstring has the formula).

Without CUDA it refuses in one sentence (exit status 2), unless --dry-run or --fetch-wheels.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from gpu import model as shapes  # noqa: E402
from gpu.report import Row, render  # noqa: E402
from gpu.rows import (  # noqa: E402
    LABEL,
    LORA_RANK,
    WARMUP,
    Part,
    comparisons,
    failure_reason,
    serve_rows,
    setup_row,
    training_metrics,
    training_row,
)
from gpu.travel import (  # noqa: E402
    TRAVEL_LIMIT,
    WHEEL_PACKAGE,
    WHEEL_SPECS,
    WHEELS,
    device_invocation,
    fetch_wheels,
    importable,
    travel_bytes,
    wheel_files,
)

BUDGET = 540.0  # seconds for the whole check: 9 minutes
WORK = Path("/tmp/gpu_check")
EXAMPLES = 2048
SMOKE_EXAMPLES = 96
BATCH = {"llama3-8b": 4, "smollm2-135m": 16}


PARTS: tuple[Part, ...] = (
    Part("env", "setup", "env", None, "versions, GPU, bf16 peak (8192^3 matmul)", 60, 20),
    Part("data", "setup", "data", None, f"tokenizer and {EXAMPLES} synthetic examples", 60, 15),
    Part("model_smol", "setup", "model", "smollm2-135m", "random bf16 weights", 60, 15, needs=("data",)),
    Part("engine_smol", "smol", "engine", "smollm2-135m", "our engine: train_lora.py LoRA", 75, 35, 12, 25,
         needs=("model_smol",)),
    Part("trainer_smol", "smol", "trainer", "smollm2-135m", "Trainer + PEFT LoRA, bf16", 75, 35, 12, 25,
         needs=("model_smol",)),
    Part("serve_smol", "serve", "serve", "smollm2-135m", "python -m serving, continuous batching", 90, 45,
         needs=("model_smol",), wheels=("serve",)),
    Part("model_8b", "setup", "model", "llama3-8b", "random bf16 weights", 180, 60, needs=("data",)),
    Part("engine_8b", "lora8b", "engine", "llama3-8b", "our engine: train_lora.py LoRA", 120, 60, 20, 45,
         needs=("model_8b",)),
    Part("trainer_8b", "lora8b", "trainer", "llama3-8b", "Trainer + PEFT LoRA, bf16", 120, 60, 20, 45,
         needs=("model_8b",)),
    Part("liger_8b", "liger8b", "engine", "llama3-8b", "our engine LoRA + Liger fused linear CE", 120, 60, 20, 55,
         needs=("model_8b",), wheels=("liger",)),
    Part("qlora_8b", "qlora8b", "engine", "llama3-8b", "our engine: --method qlora (nf4)", 150, 75, 20, 65,
         needs=("model_8b",), wheels=("bnb",), extra=("--method", "qlora")),
)
GROUPS = ("smol", "serve", "lora8b", "liger8b", "qlora8b")
EXPECTED_IMPORTS = {"liger": ("liger_kernel.transformers.fused_linear_cross_entropy",), "bnb": ("bitsandbytes",)}


# --- the plan ---------------------------------------------------------------------------------------------------


def select_parts(groups: list[str]) -> list[Part]:
    """The parts of these groups, with the setup parts they need, in run order."""
    by_key = {p.key: p for p in PARTS}
    wanted = {p.key for p in PARTS if p.group in groups}
    pending = list(wanted)
    while pending:
        for need in by_key[pending.pop()].needs:
            if need not in wanted:
                wanted.add(need)
                pending.append(need)
    if wanted:
        wanted.add("env")  # versions and the peak behind MFU: always
    return [p for p in PARTS if p.key in wanted]


def allot(left: float, part: Part, later_minimum: float) -> float | None:
    """Seconds `part` may run with `left` seconds of the budget remaining and `later_minimum` seconds kept for
    the parts after it: its own limit, or less; None when that is below its minimum (then it is skipped)."""
    seconds = min(part.timeout, left - later_minimum)
    return seconds if seconds >= part.minimum else None


def training_cap(part: Part, seconds: float) -> float:
    """Seconds of timed training steps within a part limited to `seconds`: the part's cap, shortened when the
    limit leaves less than the cap plus its overhead (loading, warm-up, saving), never under 5."""
    return max(5.0, min(part.cap, seconds - part.overhead))


# Flags of work outside training that a throughput check should not pay for, passed when the engine has them
# (TrainConfig field -> flag): the general reference generates the base model's answers before training.
OPTIONAL_ENGINE_FLAGS = {"no_general_reference": "--no-general-reference"}


def optional_engine_flags() -> list[str]:
    """The OPTIONAL_ENGINE_FLAGS this checkout's engine knows (read from training/config.py's TrainConfig)."""
    from dataclasses import fields

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from training.config import TrainConfig
    except Exception:  # the engine's own run will say what is wrong
        return []
    known = {f.name for f in fields(TrainConfig)}
    return [flag for name, flag in OPTIONAL_ENGINE_FLAGS.items() if name in known]


def engine_flags(batch: int, device: str = "cuda") -> list[str]:
    """The train_lora.py flags every engine contender gets (./train.sh takes the same): one epoch at most, no
    validation split, no auto-stop, no evaluation or TensorBoard at the end, LoRA as the Trainer baseline."""
    return [*optional_engine_flags(), "--mode", "slow", "--epochs", "1", "--force-epochs", "--validation-split", "0",
            "--batch-size", str(batch), "--gradient-accumulation-steps", "1", "--lora-r", str(LORA_RANK),
            "--lora-alpha", str(2 * LORA_RANK), "--lora-dropout", "0.05", "--target-modules", "all-linear",
            "--learning-rate", "2e-4", "--device", device, "--seed", "42", "--skip-test", "--no-tensorboard",
            "--save-total-limit", "1"]


@dataclass
class Paths:
    work: Path

    @property
    def data(self) -> Path:
        return self.work / "data.json"

    def model_dir(self, shape: str) -> Path:
        return self.work / shape

    def model_path(self, shape: str) -> Path:
        return self.work / shape / "model"

    def run_dir(self, key: str) -> Path:
        return self.work / "runs" / key

    def result(self, key: str) -> Path:
        return self.work / "results" / f"{key}.json"

    def log(self, key: str) -> Path:
        return self.work / "logs" / f"{key}.log"

    def site(self, group: str) -> Path:
        return self.work / "site" / group


def command(part: Part, paths: Paths, cap: float, warmup: int = WARMUP, precision: str = "handler",
            python: str = sys.executable, smoke: bool = False) -> list[str]:
    """The command line of a part (`smoke`: toy shapes on the CPU, to check the plumbing)."""
    gpu = BENCH / "gpu"
    result = str(paths.result(part.key))
    if part.kind in ("env", "data", "model"):
        cmd = [python, str(gpu / "build.py"), part.kind, "--result", result, "--work", str(paths.work)]
        if part.kind == "data":
            cmd += ["--examples", str(SMOKE_EXAMPLES if smoke else EXAMPLES)]
        if part.kind == "model":
            cmd += ["--shape", part.shape, *(["--tiny"] if smoke else [])]
        return cmd
    if part.kind == "engine":
        expect = [arg for group in part.wheels for module in EXPECTED_IMPORTS.get(group, ())
                  for arg in ("--expect", module)]
        return [python, str(gpu / "engine_probe.py"), "--result", result, "--warmup", str(warmup), "--time-cap",
                f"{cap:g}", "--precision", precision, *expect, "--",
                "--model-path", str(paths.model_path(part.shape)), "--output", str(paths.run_dir(part.key) / "lora"),
                "--data", str(paths.data), *engine_flags(BATCH[part.shape], "cpu" if smoke else "cuda"), *part.extra]
    if part.kind == "trainer":
        return [python, str(gpu / "trainer_probe.py"), "--model", str(paths.model_path(part.shape)), "--data",
                str(paths.data), "--result", result, "--batch-size", str(BATCH[part.shape]), "--rank", str(LORA_RANK),
                "--warmup", str(warmup), "--time-cap", f"{cap:g}", *(["--precision", "float32"] if smoke else [])]
    if part.kind == "serve":
        return [python, str(gpu / "serve_probe.py"), "--model-dir", str(paths.model_dir(part.shape)), "--result", result,
                "--clients", "8", "--tokens", "128", "--rounds", "2", "--start-timeout", "60",
                "--log", str(paths.log(part.key))]
    raise ValueError(f"unknown part kind {part.kind}")


# --- measurements into rows -------------------------------------------------------------------------------------


def gpu_problem() -> str | None:
    """Why this machine cannot run the check (one sentence), or None."""
    try:
        import torch
    except Exception as exc:  # no torch at all: the same sentence's first half
        return f"needs an NVIDIA GPU with PyTorch, and torch does not import here ({type(exc).__name__}: {exc})"
    if not torch.cuda.is_available():
        return (f"needs an NVIDIA GPU: torch.cuda.is_available() is False on this machine (torch {torch.__version__}, "
                f"CUDA build {torch.version.cuda or 'none'}); run it on the GPU machine as bench/GPU_CHECK.md says, "
                "or add --dry-run to see the plan")
    return None


def child_env(sites: list[Path]) -> dict:
    env = dict(os.environ)
    # offline, as the GPU machine is; USE_HUB_KERNELS=0: no contender tries to fetch transformers' Hub kernels
    env.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", USE_HUB_KERNELS="0")
    env["PYTHONPATH"] = os.pathsep.join([str(s) for s in sites] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def stop_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the part's process group (the engine saves and exits), SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class Check:
    def __init__(self, args) -> None:
        self.args = args
        self.smoke = args.cpu_smoke
        self.started = time.monotonic()
        self.deadline = self.started + args.budget
        self.paths = Paths(args.work)
        self.out = args.out
        self.parts = select_parts(args.parts)
        self.rows: list[Row] = []
        self.outcomes: dict[str, str] = {}
        self.records: dict[str, dict | None] = {}
        self.sites: dict[str, Path | None] = {}
        self.site_problems: dict[str, str] = {}
        self.wheel_versions: dict[str, list[str]] = {}
        self.logs: list[str] = []

    def say(self, text: str) -> None:
        print(f"[gpu_check {time.monotonic() - self.started:5.0f} s] {text}", flush=True)

    # wheels
    def install_wheels(self) -> None:
        for group in sorted({g for p in self.parts for g in p.wheels}):
            if importable(group):  # the machine has them: nothing to install
                self.sites[group] = None
                self.wheel_versions[group] = ["the machine's own"]
                continue
            files = wheel_files(self.args.wheels, group)
            self.wheel_versions[group] = [f.name.split("-")[0] + " " + f.name.split("-")[1] for f in files]
            if not files:
                self.site_problems[group] = (
                    f"{WHEEL_PACKAGE[group]} missing: not installed here and no wheel in "
                    f"{self._shown(self.args.wheels / group)} (run `bash bench/gpu_check.sh --fetch-wheels` on a machine "
                    f"with network and carry {self._shown(self.args.wheels)})")
                continue
            target = self.paths.site(group)
            shutil.rmtree(target, ignore_errors=True)
            cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   "--no-cache-dir", "--disable-pip-version-check", "--target", str(target), *map(str, files)]
            done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
            if done.returncode != 0:
                self.site_problems[group] = f"installing the {group} wheels failed: {failure_reason(done.stdout)}"
            else:
                self.sites[group] = target
            self.say(f"wheels {group}: {self.site_problems.get(group, 'installed in ' + str(target))}")

    @staticmethod
    def _shown(path: Path) -> str:
        try:
            return str(path.resolve().relative_to(ROOT))
        except ValueError:
            return str(path)

    # the run
    def blocked(self, part: Part) -> str | None:
        for need in part.needs:
            if self.outcomes.get(need) != "ok":
                return f"skipped: needs {need}, which {self.outcomes.get(need, 'did not run')}"
        for group in part.wheels:
            if group in self.site_problems:
                return f"skipped: {self.site_problems[group]}"
        if part.key == "model_8b" and not self.smoke:
            free = shutil.disk_usage(self.paths.work).free / 1024**3
            if free < 20:
                return f"skipped: {free:.0f} GiB free in {self.paths.work}; the 8B weights take 15 GiB"
        return None

    def later_minimum(self, index: int) -> float:
        total = 0.0
        failed = {k for k, v in self.outcomes.items() if v != "ok"}
        for part in self.parts[index + 1:]:
            if not failed.intersection(part.needs) and not any(g in self.site_problems for g in part.wheels):
                total += part.minimum
        return total

    def run(self) -> int:
        self.paths.work.mkdir(parents=True, exist_ok=True)
        for sub in ("results", "logs", "runs"):
            (self.paths.work / sub).mkdir(exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            self.install_wheels()
        except Exception as exc:  # the parts that need wheels say so; the rest runs
            for group in WHEEL_SPECS:
                self.site_problems.setdefault(group, f"installing wheels failed: {exc}")
        try:
            for index, part in enumerate(self.parts):
                self.run_part(index, part)
                self.write()
        except KeyboardInterrupt:
            self.say("interrupted: the table has the parts that ran")
            self.write()
            return 130
        self.write(final=True)
        print(self.markdown(), flush=True)
        return 0 if all(v == "ok" for v in self.outcomes.values()) else 1

    def run_part(self, index: int, part: Part) -> None:
        reason = self.blocked(part)
        seconds = None
        if reason is None:
            left = self.deadline - time.monotonic()
            seconds = allot(left, part, self.later_minimum(index))
            if seconds is None:
                reason = (f"skipped: time budget ({max(0, left):.0f} s of {self.args.budget:.0f} left, "
                          f"{self.later_minimum(index):.0f} kept for later parts; it needs {part.minimum:.0f} s)")
        if reason is not None:
            self.outcomes[part.key] = "was skipped"
            self.records[part.key] = None
            self.rows += self.rows_for(part, None, reason)
            self.say(f"{part.key}: {reason}")
            return
        cap = training_cap(part, seconds) if part.kind in ("engine", "trainer") else 0.0
        cmd = command(part, self.paths, cap, self.args.warmup, self.args.engine_precision, smoke=self.smoke)
        sites = [self.sites[g] for g in part.wheels if self.sites.get(g)]
        self.say(f"{part.key}: started, limit {seconds:.0f} s" + (f", {cap:.0f} s of timed steps" if cap else ""))
        result_file, log_file = self.paths.result(part.key), self.paths.log(part.key)
        result_file.unlink(missing_ok=True)
        started = time.monotonic()
        with open(log_file, "ab") as log:
            log.write(("$ " + " ".join(cmd) + "\n").encode())
            log.flush()
            process = subprocess.Popen(cmd, cwd=ROOT, env=child_env(sites), stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                status, timed_out = process.wait(timeout=seconds), False
            except subprocess.TimeoutExpired:
                stop_group(process)
                status, timed_out = process.returncode, True
            except KeyboardInterrupt:
                stop_group(process, grace=5)
                raise
        took = time.monotonic() - started
        record = self.read(result_file)
        log_text = log_file.read_text(errors="replace")
        self.logs.append(f"===== {part.key} ({took:.0f} s, status {status}{', timed out' if timed_out else ''})\n"
                         + "\n".join(log_text.splitlines()[-150:]))
        if timed_out:
            outcome = f"timed out after {seconds:.0f} s"
        elif status == 0 and (record or {}).get("status", "ok") == "ok":
            outcome = "ok"
        else:
            error = (record or {}).get("error") or failure_reason(log_text)
            outcome = ("skipped: " if (record or {}).get("status") == "skipped" else "failed: ") + error
        self.outcomes[part.key] = outcome if outcome == "ok" else ("timed out" if timed_out else "failed")
        self.records[part.key] = record
        rows = self.rows_for(part, record, outcome)
        if part.kind not in ("env", "data", "model"):
            rows[0].notes.append(f"{took:.0f} s in all")
        self.rows += rows
        self.say(f"{part.key}: {outcome} ({took:.0f} s)")
        if part.kind in ("engine", "trainer"):
            shutil.rmtree(self.paths.run_dir(part.key), ignore_errors=True)

    def rows_for(self, part: Part, record: dict | None, outcome: str) -> list[Row]:
        if part.kind in ("engine", "trainer"):
            return [training_row(part, record, outcome, self.peak(), shapes.shape_of(part.shape, self.smoke))]
        if part.kind == "serve":
            return serve_rows(part, record, outcome)
        return [setup_row(part, record, outcome)]

    @staticmethod
    def read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def peak(self) -> float | None:
        env = self.records.get("env") or {}
        return (env.get("peak") or {}).get("flops_per_second")

    # the report
    def header(self) -> list[str]:
        env = self.records.get("env") or {}
        lines = [f"# GPU check ({dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}, "
                 f"{time.monotonic() - self.started:.0f} s of a {self.args.budget:.0f} s budget)", ""]
        if self.smoke:
            lines.append("CPU SMOKE RUN (--cpu-smoke): toy shapes on the CPU, a check of the plumbing only; the "
                         "numbers mean nothing.")
        if env:
            peak = env.get("peak") or {}
            lines.append(f"GPU: {env.get('gpu')} ({env.get('gpu_memory_gib')} GiB); measured bf16 peak "
                         f"{peak.get('flops_per_second', 0) / 1e12:.0f} TFLOP/s ({peak.get('size')}^3 matmul). "
                         f"Python {env.get('python')}, torch {env.get('torch')} (CUDA {env.get('cuda')}), transformers "
                         f"{env.get('transformers')}, peft {env.get('peft')}, accelerate {env.get('accelerate')}, triton "
                         f"{env.get('triton')}.")
        carried = "; ".join(f"{g}: {', '.join(v)}" for g, v in self.wheel_versions.items() if v)
        if carried:
            lines.append(f"Carried wheels: {carried}.")
        lines.append(f"Training: LoRA r={LORA_RANK}, alpha {2 * LORA_RANK}, dropout 0.05, every linear layer, lr 2e-4, "
                     f"batch {BATCH['llama3-8b']} examples (8B) / {BATCH['smollm2-135m']} (135M), no accumulation; "
                     f"{self.args.warmup} warm-up steps, then up to the part's cap of timed steps (one epoch at most). "
                     f"Our engine runs as ./train.sh runs it (train_lora.py, precision: "
                     f"{'its handler' if self.args.engine_precision == 'handler' else 'forced ' + self.args.engine_precision}).")
        return lines

    def footer(self) -> list[str]:
        return ["tokens/s: tokens of the examples trained (prompt and answer; padding never counted) over the timed "
                "steps, from the end of the last warm-up step, GPU-synchronised. Peak GPU GiB: "
                "torch.cuda.max_memory_allocated() in the contender's process (reserved in the notes).",
                "MFU: model FLOPs of the timed steps / time / the measured bf16 peak; per example of n tokens "
                "n (4 N_mm + 6 N_lora) + 6 L H d_head n (n+1): forward and input gradients of the frozen matrices, "
                "forward and both gradients of LoRA, causal attention; the output head counted at every position, "
                "recomputation not counted (bench/gpu/model.py).",
                "Serving: aggregate completion tokens/s (greedy, 128 tokens per request, ignore_eos) of 1 client, "
                "then of 8 concurrent ones, on one `python -m serving --max-concurrency 8 --batching on` server. "
                "Every part ran offline with USE_HUB_KERNELS=0; bench/GPU_CHECK.md says more."]

    def markdown(self) -> str:
        rows = [Row(**asdict(r)) for r in self.rows]  # copies: the comparisons are added afresh each time
        comparisons(rows)
        return render(rows, self.header(), self.footer())

    def write(self, final: bool = False) -> None:
        (self.out / "gpu_check.md").write_text(self.markdown())
        summary = {"budget": self.args.budget, "seconds": round(time.monotonic() - self.started, 1), "final": final,
                   "outcomes": self.outcomes, "wheels": self.wheel_versions, "wheel_problems": self.site_problems,
                   "records": {k: _without_steps(v) for k, v in self.records.items()},
                   "metrics": {p.key: training_metrics(self.records[p.key], shapes.shape_of(p.shape, self.smoke),
                                                       self.peak())
                               for p in self.parts if p.kind in ("engine", "trainer") and self.records.get(p.key)}}
        (self.out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
        (self.out / "gpu_check.log").write_text("\n\n".join(self.logs) + "\n")


def _without_steps(record: dict | None) -> dict | None:
    if not record:
        return record
    return {k: v for k, v in record.items() if k != "steps"} | {"step_count": len(record.get("steps") or [])}


# --- dry run and wheels -----------------------------------------------------------------------------------------


def plan_text(args) -> str:
    parts = select_parts(args.parts)
    paths = Paths(args.work)
    lines = [f"GPU check plan: {len(parts)} parts, budget {args.budget:.0f} s (each part's limit is shortened so "
             "the parts after it keep their minimum; a part that cannot get its minimum is skipped).", ""]
    total = 0.0
    for part in parts:
        total += part.timeout
        cap = training_cap(part, part.timeout) if part.kind in ("engine", "trainer") else 0
        lines.append(f"[{part.key}] ({part.group}) {LABEL.get(part.shape, '')} {part.contender}: limit "
                     f"{part.timeout:.0f} s, minimum {part.minimum:.0f} s" + (f", {cap:.0f} s of timed steps" if cap
                                                                             else "")
                     + (f", needs {', '.join(part.needs)}" if part.needs else "")
                     + (f", wheels {', '.join(part.wheels)}" if part.wheels else ""))
        lines.append("    " + " ".join(command(part, paths, cap, args.warmup, args.engine_precision, "python3")))
    lines.append(f"Sum of the limits {total:.0f} s, of the minimums {sum(p.minimum for p in parts):.0f} s; "
                 f"budget {args.budget:.0f} s.")
    lines += ["", f"Wheels ({args.wheels}):"]
    wheel_total = 0
    for group in sorted({g for p in parts for g in p.wheels}):
        files = wheel_files(args.wheels, group)
        size = sum(f.stat().st_size for f in files)
        wheel_total += size
        lines.append(f"  {group}: " + (f"{len(files)} wheel(s), {size / 1024**2:.1f} MiB" if files else
                                       "none: its parts are skipped unless the GPU machine has "
                                       f"{WHEEL_PACKAGE[group]} (`--fetch-wheels` downloads them)"))
    tree = travel_bytes()
    if tree is not None:
        whole = tree + wheel_total
        lines.append(f"What travels: working tree {tree / 1024**2:.1f} MiB + wheels {wheel_total / 1024**2:.1f} MiB = "
                     f"{whole / 1024**2:.1f} MiB of {TRAVEL_LIMIT / 1024**2:.0f} MiB"
                     + ("" if whole <= TRAVEL_LIMIT else " - TOO MUCH: split into two calls, --parts "
                        "smol,serve,lora8b,liger8b carrying .whl/gpu_check/serve and .whl/gpu_check/liger, then --parts "
                        "qlora8b carrying .whl/gpu_check/bnb (bench/GPU_CHECK.md)"))
    lines += ["", device_invocation(), f"Results: {args.out}/gpu_check.md (and .json, .log)."]
    return "\n".join(lines) + "\n"


# --- entry -------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="bench/gpu_check.sh", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default=",".join(GROUPS),
                        help=f"comma-separated groups to run (default all): {', '.join(GROUPS)}")
    parser.add_argument("--budget", type=float, default=BUDGET, help="seconds for everything (default 540)")
    parser.add_argument("--out", type=Path, default=None, help="folder of gpu_check.md/.json/.log (default $OUT, "
                                                               "else the current folder)")
    parser.add_argument("--work", type=Path, default=WORK, help="scratch folder for models and runs (default "
                                                                "/tmp/gpu_check; the 8B weights take 15 GiB)")
    parser.add_argument("--wheels", type=Path, default=WHEELS, help="folder of the carried wheels, one subfolder per "
                                                                    "group (default .whl/gpu_check)")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="optimizer steps not timed (default 3)")
    parser.add_argument("--engine-precision", choices=("handler", "bfloat16"), default="handler",
                        help="handler: our engine's own choice, as users get it (default); bfloat16: forced")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit (no GPU needed)")
    parser.add_argument("--fetch-wheels", action="store_true", help="download the wheels into --wheels and exit")
    parser.add_argument("--cpu-smoke", action="store_true", help="run every part on the CPU with toy shapes: checks "
                                                                 "the plumbing (minutes); the numbers mean nothing")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.parts.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups:
        parser.error(f"--parts takes {', '.join(GROUPS)}; not {', '.join(unknown) or 'nothing'}")
    args.parts = groups
    args.warmup = max(1, args.warmup)
    if args.out is None:
        args.out = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path.cwd()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fetch_wheels:
        return fetch_wheels(args.wheels)
    if args.dry_run:
        print(plan_text(args), end="")
        return 0
    problem = None if args.cpu_smoke else gpu_problem()
    if problem:
        print(f"gpu_check: {problem}.", file=sys.stderr)
        return 2
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
