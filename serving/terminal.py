"""--chat: talk to the model in the terminal, answers streamed as they are generated."""

from __future__ import annotations

from typing import TextIO

from .engine import Generation, GenerationParams, ModelEngine

HELP = "Type a message and press Enter. /system TEXT sets the system prompt, /clear forgets the chat, /exit quits."
MAX_NEW_TOKENS = 512


def chat_loop(engine: ModelEngine, stdin: TextIO, stdout: TextIO, temperature: float = 0.7) -> int:
    """Read lines until EOF or /exit; keep the conversation; print each answer as it streams."""
    adapter = f" with adapter {engine.adapter.path}" if engine.adapter else ""
    print(f"Chatting with the model{adapter}. {HELP}", file=stdout, flush=True)
    system: str | None = None
    history: list[dict] = []
    while True:
        print("> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:
            print(file=stdout)
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/clear":
            history.clear()
            print("(chat cleared)", file=stdout, flush=True)
            continue
        if text.startswith("/system"):
            system = text.removeprefix("/system").strip() or None
            print(f"(system prompt {'set' if system else 'cleared'})", file=stdout, flush=True)
            continue
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        prompt = engine.chat_prompt(messages)
        room = engine.context_length - len(prompt)
        if room < 1:
            history.pop()
            print("(the conversation is longer than the model's context: /clear to start again)", file=stdout)
            continue
        params = GenerationParams(max_tokens=min(MAX_NEW_TOKENS, room), temperature=temperature, top_p=0.95)
        pieces = []
        try:
            for piece in engine.stream(prompt, params, Generation(prompt_tokens=len(prompt))):
                pieces.append(piece)
                print(piece, end="", file=stdout, flush=True)
        except KeyboardInterrupt:
            print(" (stopped)", end="", file=stdout)
        print(file=stdout, flush=True)
        history.append({"role": "assistant", "content": "".join(pieces)})
