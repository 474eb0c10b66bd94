"""Bounded work for code the server does not trust to end: rendering a chat template (an adapter's own
chat_template.jinja can loop 99999 x 99999 times).

A render runs in its own thread; when it overruns its time budget or its client leaves, the thread is stopped by
raising an exception inside it (CPython's PyThreadState_SetAsyncExc), which a template's Python-level loops notice
at their next bytecode. Renders run at most RENDERS_AT_ONCE at a time and one per route, so hostile requests
cannot take every worker thread and do not delay other routes' renders by more than one budget. What a render
produces is capped too (`check_size`): a template that writes megabytes is refused before anything tokenizes it.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import weakref
from collections.abc import Callable

RENDER_SECONDS = 2.0  # a real template renders in milliseconds; a conversation at the context limit in < 0.5 s
RENDERS_AT_ONCE = 2  # and one per route (template) at a time: see `bounded`
CHARS_PER_TOKEN_LIMIT = 64  # a rendered prompt longer than context x this cannot be a real conversation


class BudgetExceeded(BaseException):
    """Raised inside an overrunning render thread, and by `bounded` to its caller. A BaseException, as
    KeyboardInterrupt is, so that no `except Exception` in a template engine or in chat_prompt's fallback swallows
    it."""


class ClientGone(Exception):
    """The client disconnected while its work ran; nobody will read the answer."""


_slots: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> {lane: its semaphore}


def _semaphore(lane: object) -> asyncio.Semaphore:
    # One set per event loop: an asyncio.Semaphore belongs to the loop that first waits on it (tests run servers
    # on several loops in one process).
    lanes = _slots.setdefault(asyncio.get_running_loop(), {})
    if lane not in lanes:
        lanes[lane] = asyncio.Semaphore(RENDERS_AT_ONCE if lane is _ALL else 1)
    return lanes[lane]


_ALL = object()  # the lane every render passes through last


class _Render(threading.Thread):
    """The thread of one render; `interrupt()` raises BudgetExceeded inside it, only while it is inside `work`
    (never in code after it, and never in another thread that later reuses its id)."""

    def __init__(self, work: Callable[[], object], deliver: Callable[[object, BaseException | None], None]):
        super().__init__(name="render", daemon=True)
        self.work, self.deliver = work, deliver
        self.lock = threading.Lock()
        self.inside = True

    def run(self) -> None:
        result, error = None, None
        try:
            result = self.work()
        except BaseException as exc:  # BudgetExceeded lands here too; handed over, never lost in the thread
            error = exc
        while True:
            try:
                with self.lock:
                    self.inside = False
                # An exception set just before `inside` went false is still pending: clear it (NULL clears).
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident), None)
                break
            except BudgetExceeded:
                error = error or BudgetExceeded()
        self.deliver(result, error)

    def interrupt(self) -> bool:
        """Raise BudgetExceeded in the render; False once it has left `work`."""
        with self.lock:
            if self.inside:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident),
                                                           ctypes.py_object(BudgetExceeded))
            return self.inside


async def bounded(work: Callable[[], object], request=None, seconds: float | None = None, lane: object = None):
    """The result of `work()` run in a thread within `seconds` (default RENDER_SECONDS); BudgetExceeded when it
    overruns, ClientGone when `request`'s client disconnects first (the thread is stopped in both cases).

    Renders of one `lane` (the route: one template) run one at a time, so a hostile template's requests queue
    behind each other and hold at most one of the RENDERS_AT_ONCE slots: other routes keep one free."""
    seconds = RENDER_SECONDS if seconds is None else seconds
    async with _semaphore(("lane", lane)), _semaphore(_ALL):
        loop = asyncio.get_running_loop()
        done: asyncio.Future = loop.create_future()
        # An overrun's own BudgetExceeded arrives after the caller got its answer: read it so asyncio does not log it.
        done.add_done_callback(lambda future: future.cancelled() or future.exception())
        thread = _Render(work, lambda result, error: loop.call_soon_threadsafe(_settle, done, result, error))
        thread.start()
        gone = asyncio.ensure_future(_disconnected(request)) if request is not None else None
        try:
            waiters = {done} | ({gone} if gone else set())
            finished, _ = await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            if done not in finished:
                # Interrupt until the thread notices (one exception may land in C code that swallows it).
                while thread.interrupt():
                    await asyncio.sleep(0.01)
                if gone is not None and gone in finished:
                    raise ClientGone()
                raise BudgetExceeded()
            return done.result()
        finally:
            if gone is not None:
                gone.cancel()


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def _disconnected(request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def check_size(text: str, context_length: int) -> None:
    """BudgetExceeded when a rendered prompt is far longer than any prompt the model could take."""
    if len(text) > context_length * CHARS_PER_TOKEN_LIMIT:
        raise BudgetExceeded()
