#!/usr/bin/env python3
"""Serving overhead: the API (streaming, through the real openai client) against the model's own
`generate` in-process, for the same prompts and the same number of tokens; then 8 concurrent
clients against 1, and 32. Everything is measured side by side in one run; ratios are what to compare.

    .venv/bin/python bench/serve_latency.py [--model-dir DIR] [--tokens 128] [--rounds 3] [--batching on]

The second server runs with --max-concurrency N (default 8) and --batching (default auto: continuous batching
on a CUDA GPU, parallel generate threads on the CPU); its 1-, N- and 32-client aggregates show what batching
gives (target on a GPU: 8 clients >= 4x one client).

Without --model-dir the built-in tiny-chat model is built into a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PROMPTS = ["What is the capital of France?", "Write a short poem about the sea.", "How do I train a model?",
           "Name three colours.", "What day comes after Monday?", "Explain what an adapter is.",
           "Say hello.", "Count from one to ten."]


def direct_generate(model_dir: Path, prompts: list[str], tokens: int) -> list[tuple[float, float]]:
    """(time to first token, tokens per second) of model.generate with a streamer, in this process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    tokenizer = AutoTokenizer.from_pretrained(model_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir / "model").eval()
    results = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        started = time.perf_counter()
        worker = threading.Thread(target=model.generate, kwargs=dict(
            **ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=streamer,
            pad_token_id=tokenizer.pad_token_id))
        worker.start()
        first = None
        for piece in streamer:
            if first is None and piece:
                first = time.perf_counter() - started
        worker.join()
        results.append((first or 0.0, tokens / (time.perf_counter() - started)))
    return results


def api_stream(client, prompt: str, tokens: int) -> tuple[float, float, int]:
    """(time to first token, tokens per second, completion tokens) of one streamed chat request."""
    started = time.perf_counter()
    first, usage = None, 0
    stream = client.chat.completions.create(model=client.served_model, messages=[{"role": "user", "content": prompt}],
                                            max_tokens=tokens, temperature=0, stream=True,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        if chunk.usage:
            usage = chunk.usage.completion_tokens
    return first or 0.0, usage / (time.perf_counter() - started), usage


def concurrent_clients(client, count: int, tokens: int) -> tuple[float, int, int]:
    """(aggregate completion tokens per second, total tokens, errors) of `count` clients at once."""
    totals, errors = [], []

    def one(index):
        try:
            totals.append(api_stream(client, PROMPTS[index % len(PROMPTS)], tokens)[2])
        except Exception as exc:  # counted and reported
            errors.append(exc)

    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:  # all clients at once; the block ends when the last one is done
        list(pool.map(one, range(count)))
    return sum(totals) / (time.perf_counter() - started), sum(totals), len(errors)


def start_server(model_dir: Path, port: int, concurrency: int, batching: str = "auto") -> subprocess.Popen:
    import httpx2 as httpx

    process = subprocess.Popen([sys.executable, "-m", "serving", "--model-dir", str(model_dir), "--port", str(port),
                                "--no-lora", "--max-concurrency", str(concurrency), "--batching", batching], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="Passes over the prompts for the 1-client figures.")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batching", choices=("auto", "on", "off"), default="auto",
                        help="the second server's --batching (the first queues: --max-concurrency 1, no batching)")
    args = parser.parse_args()

    import logging

    import openai
    from serving_helpers import free_port

    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from installer.install import InstallOptions, install

            model_dir = install(InstallOptions(model="builtin:tiny-chat", models_dir=Path(tmp)),
                                echo=lambda _m: None).model_dir.root
        prompts = PROMPTS * args.rounds
        direct = direct_generate(model_dir, prompts, args.tokens)
        for concurrency in (1, args.concurrency):
            port = free_port()
            server = start_server(model_dir, port, concurrency, "off" if concurrency == 1 else args.batching)
            try:
                client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
                client.served_model = client.models.list().data[0].id  # the server's default model id
                api_stream(client, "warm up", 8)
                if concurrency == 1:
                    api = [api_stream(client, p, args.tokens) for p in prompts]
                    single, _, _ = concurrent_clients(client, 1, args.tokens)
                    many, many_tokens, errors = concurrent_clients(client, args.concurrency, args.tokens)
                    print(f"{len(prompts)} prompts, {args.tokens} tokens each, greedy; medians:")
                    for name, rows in (("direct generate (in-process)", direct), ("API streaming (openai client)",
                                                                                   [(a, b) for a, b, _ in api])):
                        print(f"  {name:32s} first token {1000 * statistics.median(r[0] for r in rows):7.1f} ms"
                              f"   {statistics.median(r[1] for r in rows):7.1f} tokens/s")
                    ttft = statistics.median(a[0] for a in api) / statistics.median(d[0] for d in direct)
                    rate = statistics.median(a[1] for a in api) / statistics.median(d[1] for d in direct)
                    print(f"  API / direct: tokens/s x{rate:.3f} ({100 * (1 - rate):+.1f}% overhead), "
                          f"first token x{ttft:.2f}")
                    label = "queued (--max-concurrency 1)"
                else:
                    single, _, _ = concurrent_clients(client, 1, args.tokens)
                    many, many_tokens, errors = concurrent_clients(client, args.concurrency, args.tokens)
                    label = f"--max-concurrency {concurrency} --batching {args.batching}"
                    print(f"  1 client, {label}: {single:.1f} tokens/s")
                print(f"  {args.concurrency} concurrent clients, {label}: {many_tokens} tokens, {errors} errors, "
                      f"aggregate {many:.1f} tokens/s = x{many / single:.2f} of one client ({single:.1f} tokens/s)")
                if concurrency == 1 or concurrency >= 32:
                    most, most_tokens, errors = concurrent_clients(client, 32, args.tokens)
                    print(f"  32 concurrent clients, {label}: {most_tokens} tokens, {errors} errors, "
                          f"aggregate {most:.1f} tokens/s = x{most / single:.2f} of one client")
            finally:
                server.terminate()
                server.wait(timeout=30)


if __name__ == "__main__":
    main()
