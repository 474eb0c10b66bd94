"""Admission of generations: a fixed number of slots, and one adapter state at a time.

The engine holds one copy of the base weights with every adapter attached; which adapter is active is
model-wide state. So generations for the same model id may share the model (up to --max-concurrency), and a
request for another id waits until those finish, then switches the adapter. Admission is first come,
first served, so a stream of requests for one adapter cannot starve another.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator

_NOTHING_ACTIVE = object()


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

    @contextlib.contextmanager
    def admit(self, key: str | None, cancel: threading.Event) -> Iterator[bool]:
        """Wait for a turn with adapter `key` active; yields False (without running) if `cancel` is set first."""
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
                admitted = False
            else:
                if self._current != key:
                    self._switch(key)
                    self._current = key
                self._active += 1
                admitted = True
        try:
            yield admitted
        finally:
            if admitted:
                with self._cond:
                    self._active -= 1
                    self._cond.notify_all()
