"""--chat: talk to the model in the terminal, answers streamed as they are generated."""

from __future__ import annotations

from typing import TextIO

from serving.budget import BudgetExceeded
from serving.engines.base import Engine, Generation, GenerationParams
from serving.images import load_image_file
from serving.protocol import ApiError
from serving.router import Route, Router

HELP = ("Type a message and press Enter. /model [ID] lists or picks the model, /system TEXT sets the system prompt, "
        "/image PATH attaches an image to your next message (multimodal models), /clear forgets the chat, /exit quits.")
MAX_NEW_TOKENS = 512


def _describe(route: Route) -> str:
    return f"{route.model_id} (adapter {route.adapter.path})" if route.adapter else f"{route.model_id} (base model)"


def chat_loop(engine: Engine, router: Router, stdin: TextIO, stdout: TextIO, temperature: float = 0.7) -> int:
    """Read lines until EOF or /exit; keep the conversation; print each answer as it streams."""
    route = router.default
    print(f"Chatting with {_describe(route)}. {HELP}", file=stdout, flush=True)
    system: str | None = None
    history: list[dict] = []
    images: list = []  # every image of the conversation, in order; `attached` go with the next message
    attached: list = []
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
        if text == "/image" or text.startswith("/image "):
            print(f"({_attach(engine, text.removeprefix('/image').strip(), attached)})", file=stdout, flush=True)
            continue
        if text == "/clear":
            history.clear()
            images.clear()
            attached.clear()
            print("(chat cleared)", file=stdout, flush=True)
            continue
        if text == "/model" or text.startswith("/model "):
            wanted = text.removeprefix("/model").strip()
            if not wanted:
                for candidate in router.routes.values():
                    print(("* " if candidate is route else "  ") + _describe(candidate), file=stdout, flush=True)
                continue
            try:
                route = router.resolve(wanted)
            except ApiError as exc:
                print(f"({exc.message})", file=stdout, flush=True)
                continue
            print(f"(now chatting with {_describe(route)})", file=stdout, flush=True)
            continue
        if text.startswith("/system"):
            system = text.removeprefix("/system").strip() or None
            print(f"(system prompt {'set' if system else 'cleared'})", file=stdout, flush=True)
            continue
        content = [{"type": "image"}] * len(attached) + [{"type": "text", "text": text}] if attached else text
        history.append({"role": "user", "content": content})
        images += attached
        messages = ([{"role": "system", "content": system}] if system else []) + history
        try:
            prompt = engine.chat_prompt(messages, route.key, None, images)
        except BudgetExceeded:  # budget.check_size: the template wrote far more than any context holds
            prompt = range(engine.context_length)
        room = engine.context_length - len(prompt)
        if room < 1:
            history.pop()
            del images[len(images) - len(attached):]
            attached.clear()
            print("(the conversation is longer than the model's context: /clear to start again)", file=stdout)
            continue
        attached.clear()
        params = GenerationParams(max_tokens=min(MAX_NEW_TOKENS, room), temperature=temperature, top_p=0.95)
        pieces = []
        try:
            for piece in engine.stream(prompt, params, Generation(prompt_tokens=len(prompt)), route.key):
                pieces.append(piece.text)
                print(piece.text, end="", file=stdout, flush=True)
        except KeyboardInterrupt:
            print(" (stopped)", end="", file=stdout)
        print(file=stdout, flush=True)
        history.append({"role": "assistant", "content": "".join(pieces)})


def _attach(engine: Engine, path: str, attached: list) -> str:
    """Load the image at `path` for the next message; the sentence to show."""
    if getattr(engine, "processor", None) is None:
        return "this model is text-only: it cannot read images"
    if not path:
        return "usage: /image PATH"

    try:
        image = load_image_file(path)
    except ValueError as exc:
        return str(exc)
    attached.append(image)
    return f"image {path} attached ({image.width}x{image.height}): it goes with your next message"
