#!/usr/bin/env python3
"""Serving throughput of this repository's server (`python -m serving`, what start.sh runs) with continuous
batching: aggregate completion tokens per second of 1 client, then of `--clients` concurrent clients, on the
same server (`--max-concurrency N --batching on`).

Each request is a non-streamed chat completion of exactly `--tokens` tokens (greedy, `ignore_eos`), so every
client asks the same amount of work; a client sends `--rounds` requests one after another. Plain urllib, so no
client library has to travel. The server runs in its own process group and is stopped at the end, however the
measurement ends.

    serve_probe.py --model-dir DIR --result R.json [--clients 8] [--tokens 128] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
ROOT = BENCH.parent
PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.", "How do I train a model?",
           "Name three colours.", "What day comes after Monday?", "Explain what an adapter is.", "Say hello.",
           "Count from one to ten."]
NEEDED = ("fastapi", "starlette", "pydantic", "uvicorn")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def missing_modules() -> list[str]:
    """The server's own dependencies that do not import here, each with its error."""
    import importlib

    missing = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except Exception as exc:  # reported, one line each
            missing.append(f"{name} ({type(exc).__name__}: {exc})".splitlines()[0][:200])
    return missing


def chat(port: int, prompt: str, tokens: int, timeout: float = 120.0) -> int:
    """Completion tokens of one request."""
    body = json.dumps({"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0,
                       "ignore_eos": True}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return int(json.loads(response.read())["usage"]["completion_tokens"])


def clients(port: int, count: int, rounds: int, tokens: int) -> dict:
    """`count` clients at once, each sending `rounds` requests in turn: aggregate tokens/s and errors."""
    done, errors = [], []

    def one(index: int) -> None:
        for turn in range(rounds):
            try:
                done.append(chat(port, PROMPTS[(index + turn) % len(PROMPTS)], tokens))
            except Exception as exc:  # counted and reported
                errors.append(f"{type(exc).__name__}: {exc}"[:200])

    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:  # all clients at once; the block ends when the last one is done
        list(pool.map(one, range(count)))
    seconds = time.perf_counter() - started
    total = sum(done)
    return {"clients": count, "requests": len(done), "tokens": total, "seconds": round(seconds, 3),
            "tokens_per_second": total / seconds if seconds > 0 else None, "errors": errors[:3],
            "error_count": len(errors)}


def wait_ready(port: int, server: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 503 while loading; an error status says why
            last = exc.read().decode(errors="replace")[:300]
            if '"error"' in last:
                raise RuntimeError(f"the server could not load the model: {last}") from exc
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s ({last})")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--start-timeout", type=float, default=120.0)
    parser.add_argument("--log", type=Path, help="the server's output (default: this process's)")
    args = parser.parse_args(argv)
    record: dict = {"status": "starting", "clients": args.clients, "tokens": args.tokens, "rounds": args.rounds}

    def write() -> None:
        args.result.write_text(json.dumps(record))

    missing = missing_modules()
    if missing:
        record.update(status="skipped", error="the server's dependencies do not import: " + "; ".join(missing))
        write()
        print(record["error"], file=sys.stderr)
        return 1
    port = free_port()
    command = [sys.executable, "-m", "serving", "--model-dir", str(args.model_dir), "--port", str(port), "--no-lora",
               "--max-concurrency", str(args.clients), "--batching", "on"]
    record["command"] = command
    log = open(args.log, "ab") if args.log else None
    server = subprocess.Popen(command, cwd=ROOT, stdout=log or None, stderr=subprocess.STDOUT if log else None,
                              start_new_session=True)
    try:
        started = time.perf_counter()
        record["health"] = wait_ready(port, server, args.start_timeout)
        record["ready_seconds"] = round(time.perf_counter() - started, 1)
        clients(port, 1, 1, args.tokens)  # warm-up at full length: one request, then a batch of them
        clients(port, args.clients, 1, args.tokens)
        record["single"] = clients(port, 1, args.rounds, args.tokens)
        write()
        record["many"] = clients(port, args.clients, args.rounds, args.tokens)
        single, many = record["single"]["tokens_per_second"], record["many"]["tokens_per_second"]
        record["speedup"] = many / single if single and many else None
        errors = record["single"]["error_count"] + record["many"]["error_count"]
        record["status"] = "ok" if not errors else "error"
        if errors:
            record["error"] = f"{errors} request(s) failed: " + "; ".join(
                record["single"]["errors"] + record["many"]["errors"])[:400]
    except Exception as exc:  # recorded for the report
        record.update(status="error", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
    finally:
        stop(server)
        if log:
            log.close()
        write()
    print(json.dumps({k: v for k, v in record.items() if k != "command"}))
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
