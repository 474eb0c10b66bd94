"""Admission of generations: a fixed number of slots, and one adapter state at a time.

The engine holds one copy of the base weights with every adapter attached; which adapter is active is
model-wide state. So generations for the same model id may share the model (up to --max-concurrency), and a
request for another id waits until those finish, then switches the adapter. Admission is first come,
first served, so a stream of requests for one adapter cannot starve another.

Fairness: a running generation calls `Turn.share()` between tokens (the transformers engine does, every
SHARE_EVERY tokens); when someone waits, it steps aside to the back of the queue and resumes when its turn comes
again (its adapter switched back on). So a short request waits for at most SHARE_EVERY tokens of each request
ahead of it, not for whole long answers: round-robin time slicing through the same FIFO.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator

_NOTHING_ACTIVE = object()
SHARE_EVERY = 16  # tokens a generation runs before it lets a waiting request have the model


class Turn:
    """An admitted generation's hold on a slot (truthy when admitted); `share()` passes the model on if others
    wait."""

    def __init__(self, gate: AdapterGate, key: str | None, cancel: threading.Event, held: bool):
        self.gate, self.key, self.cancel, self.held = gate, key, cancel, held

    def __bool__(self) -> bool:
        return self.held

    def share(self) -> None:
        """Step aside for whoever waits (no-op when nobody does); returns once this generation runs again, or at
        once when it was cancelled while waiting (it then holds no slot and must stop)."""
        if not self.held or not self.gate.waiting:
            return
        self.gate._release()
        self.held = self.gate._acquire(self.key, self.cancel)


class AdapterGate:
    """FIFO admission; `switch(key)` is called (with nothing generating) before a different key runs."""

    def __init__(self, slots: int, switch: Callable[[str | None], None]):
        self._slots, self._switch = slots, switch
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()
        self._active = 0
        self._current: object = _NOTHING_ACTIVE

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _may_start(self, ticket: object, key: str | None) -> bool:
        return (self._queue[0] is ticket and self._active < self._slots
                and (self._active == 0 or self._current == key))

    def _acquire(self, key: str | None, cancel: threading.Event) -> bool:
        """Wait for a slot with adapter `key` active; False (no slot) if `cancel` is set first."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                # The timeout lets a request whose client left notice its cancel flag while queued.
                while not cancel.is_set() and not self._may_start(ticket, key):
                    self._cond.wait(0.05)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
            if cancel.is_set():
                return False
            if self._current != key:
                self._switch(key)
                self._current = key
            self._active += 1
            return True

    def _release(self) -> None:
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def admit(self, key: str | None, cancel: threading.Event) -> Iterator[Turn]:
        """Wait for a turn with adapter `key` active; yields a false Turn (without running) if `cancel` is set
        first."""
        turn = Turn(self, key, cancel, self._acquire(key, cancel))
        try:
            yield turn
        finally:
            if turn.held:
                self._release()
