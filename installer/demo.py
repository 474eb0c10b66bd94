"""`llm-installer demo`: the whole product in one command, on a built-in model, offline.

It runs the three commands a user would type, printing each one with its timing:
`llm-installer install builtin:NAME`, `./train.sh --data <bundled examples> ...` and `./start.sh`
(once with --no-lora before training, once after), asks the server the same questions each time
and prints the base answers beside the tuned ones. The model directory stays for further use.

The install step runs `python -m installer` with the Python running the demo: that is what the
`llm-installer` entry script execs once its environment exists, and it is the environment we are in.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from core.settings import INSTALLER_HOME, directory_name

DEMO_DATA = INSTALLER_HOME / "examples" / "data" / "quickstart_qa.json"
SERVER_START_TIMEOUT_S = 600
ANSWER_TOKENS = 48


class DemoError(UserError, RuntimeError):
    """A demo step failed; the message names the step and where its output is."""


@dataclass(frozen=True)
class Question:
    """A question the demo asks before and after training; `expected` is the trained answer, if any."""

    text: str
    expected: str | None = None


@dataclass(frozen=True)
class Recipe:
    """How the demo trains one built-in model, and what it asks it."""

    train_args: tuple[str, ...]
    questions: tuple[Question, ...]
    why: str


def _trained(text: str) -> Question:
    answers = {row["question"]: row["answer"] for row in json.loads(DEMO_DATA.read_text(encoding="utf-8"))}
    return Question(text, answers[text])


# Fixed, short runs: `--circular` chases a perfect loss far longer than "a few minutes" on 2 CPU cores.
# The real model adapts every linear layer at a high learning rate so that 6 epochs of 3 steps teach it
# the bundled answers; the toy gets a few steps that prove the plumbing (it cannot learn language that fast).
RECIPES: dict[str, Callable[[], Recipe]] = {
    "builtin:smollm2-135m": lambda: Recipe(
        train_args=("--target-modules", "all-linear", "--learning-rate", "3e-3", "--epochs", "6", "--force-epochs",
                    "--batch-size", "4", "--skip-test"),
        questions=(_trained("What is the name of this assistant?"), _trained("How do I start the server?"),
                   Question("Who wrote Romeo and Juliet?")),
        why="a real 135M-parameter chat model: it learns the bundled answers and keeps its general knowledge",
    ),
    "builtin:tiny-chat": lambda: Recipe(
        train_args=("--epochs", "3", "--force-epochs", "--batch-size", "4", "--skip-test"),
        questions=(_trained("What is the name of this assistant?"), _trained("How do I start the server?")),
        why="a random ~1M-parameter toy: a short fine-tune proves the plumbing in seconds, its answers stay noise",
    ),
}
DEFAULT_MODEL = "builtin:smollm2-135m"


@dataclass
class DemoResult:
    """What the demo did: the model directory, answers before/after, and the time of each step."""

    model_dir: Path
    questions: tuple[Question, ...]
    base: list[str] = field(default_factory=list)
    tuned: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _shown(command: list[str], cwd: Path | None = None) -> str:
    prefix = f"(cd {shlex.quote(str(cwd))} && " if cwd else ""
    return prefix + " ".join(shlex.quote(part) for part in command) + (")" if cwd else "")


def _run(label: str, shown: list[str], command: list[str], cwd: Path | None, result: DemoResult,
         echo: Callable[[str], None], env: dict | None = None) -> None:
    echo(f"\n$ {_shown(shown, cwd)}")
    started = time.monotonic()
    completed = subprocess.run(command, cwd=cwd, env=env)
    result.timings[label] = time.monotonic() - started
    if completed.returncode != 0:
        raise DemoError(f"`{_shown(shown)}` failed with exit status {completed.returncode}; its output is above.")
    echo(f"[{label}: {result.timings[label]:.1f}s]")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`./start.sh` in the background, its output in a log file, stopped on exit."""

    def __init__(self, model_dir: Path, args: list[str], log: Path):
        self.model_dir, self.args, self.log = model_dir, args, log
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = ["./start.sh", *args, "--port", str(self.port)]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        with self.log.open("w") as handle:
            self.process = subprocess.Popen(self.command, cwd=self.model_dir, stdout=handle, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DemoError(f"./start.sh exited with status {self.process.returncode} before serving; "
                                f"see {self.log}:\n{self._tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise DemoError(f"./start.sh did not answer on {self.url} within {SERVER_START_TIMEOUT_S}s; see {self.log}.")

    def _tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def ask(self, question: str) -> str:
        """The server's answer to one user message, greedy."""
        body = json.dumps({"messages": [{"role": "user", "content": question}], "temperature": 0,
                           "max_tokens": ANSWER_TOKENS}).encode()
        request = urllib.request.Request(f"{self.url}/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise DemoError(f"The server answered HTTP {exc.code} to {question!r}: {exc.read()[:300]!r}") from exc
        return " ".join(reply["choices"][0]["message"]["content"].split())

    def __exit__(self, *exc) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # start.sh and the server it runs
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _serve_and_ask(label: str, model_dir: Path, args: list[str], result: DemoResult, answers: list[str],
                   echo: Callable[[str], None]) -> None:
    started = time.monotonic()
    with Server(model_dir, args, model_dir / f"demo-{label.split()[0]}-server.log") as server:
        echo(f"\n$ {_shown(server.command, model_dir)} &    # log: {server.log.name}")
        echo(f"[server ready on {server.url} after {time.monotonic() - started:.1f}s]")
        for index, question in enumerate(result.questions):
            if index == 0:
                echo(f"$ curl -s {server.url}/v1/chat/completions -H 'Content-Type: application/json' "
                     f"-d '{{\"messages\": [{{\"role\": \"user\", \"content\": \"{question.text}\"}}], "
                     f"\"temperature\": 0}}'")
            answers.append(server.ask(question.text))
            echo(f"  Q: {question.text}\n  A: {answers[-1]}")
        echo("(stopping the server)")
    result.timings[label] = time.monotonic() - started


def run_demo(model: str, models_dir: Path, echo: Callable[[str], None] = print) -> DemoResult:
    """Install `model`, ask it, fine-tune it on the bundled examples, ask again; returns what happened."""
    if model not in RECIPES:
        raise DemoError(f"The demo runs a built-in model: {', '.join(RECIPES)} (not {model}).")
    recipe = RECIPES[model]()
    model_dir = models_dir / directory_name(model)
    result = DemoResult(model_dir=model_dir, questions=recipe.questions)
    echo(f"llm-installer demo with {model}: {recipe.why}.")
    started = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(INSTALLER_HOME), os.environ.get("PYTHONPATH")]))}
    _run("install", ["llm-installer", "install", model, "--models-dir", str(models_dir)],
         [sys.executable, "-m", "installer", "install", model, "--models-dir", str(models_dir)], None, result, echo, env)
    _serve_and_ask("base model served", model_dir, ["--no-lora"], result, result.base, echo)
    train = ["./train.sh", "--data", str(DEMO_DATA), *recipe.train_args, "--no-tensorboard"]
    _run("fine-tune", train, train, model_dir, result, echo)
    _serve_and_ask("tuned model served", model_dir, [], result, result.tuned, echo)
    result.timings["total"] = time.monotonic() - started
    _summary(result, echo)
    return result


def _summary(result: DemoResult, echo: Callable[[str], None]) -> None:
    echo("\nBase vs tuned:")
    for question, before, after in zip(result.questions, result.base, result.tuned, strict=True):
        echo(f"  Q: {question.text}")
        echo(f"     base : {before}")
        echo(f"     tuned: {after}")
        if question.expected:
            learned = question.expected.lower().rstrip(".") in after.lower()
            echo(f"     trained answer: {question.expected} ({'learned' if learned else 'not reproduced'})")
    echo("\nTimings: " + ", ".join(f"{label} {seconds:.0f}s" for label, seconds in result.timings.items()))
    echo(f"\nThe model stays in {result.model_dir} with its adapter in ./lora. Next:\n"
         f"  cd {shlex.quote(str(result.model_dir))} && ./start.sh    # http://127.0.0.1:8000/ is a chat page")
