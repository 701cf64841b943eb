"""Bounded queues between pipeline stages.

``realtime`` mode: ``put`` never blocks; when the queue is full the *oldest*
item is dropped and counted, so latency cannot grow under overload.
``strict`` mode: ``put`` blocks until there is room (nothing is dropped; for
deterministic offline runs and tests).  No busy waiting: everything waits on a
``threading.Condition``.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Deque, Optional


class Closed(Exception):
    """Raised by ``get``/``put`` once the queue is closed and (for get) drained."""


class DropOldestQueue:
    def __init__(self, maxsize: int, *, block_when_full: bool = False, name: str = "queue",
                 on_drop: Optional[Callable[[Any], None]] = None):
        if maxsize < 1:
            raise ValueError(f"{name}: maxsize must be >= 1, got {maxsize}")
        self.maxsize = int(maxsize)
        self.block_when_full = block_when_full
        self.name = name
        self.on_drop = on_drop
        self._items: Deque[Any] = collections.deque()
        self._urgent: Deque[Any] = collections.deque()  # never dropped, served first
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0
        self.put_count = 0
        self.high_water = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._items) + len(self._urgent)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: Any, timeout: Optional[float] = None) -> bool:
        """Enqueue. Returns False if it timed out waiting for room (strict mode)."""
        dropped = None
        with self._cond:
            if self._closed:
                raise Closed(self.name)
            if len(self._items) >= self.maxsize:
                if self.block_when_full:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while len(self._items) >= self.maxsize and not self._closed:
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            return False
                        self._cond.wait(remaining)
                    if self._closed:
                        raise Closed(self.name)
                else:
                    dropped = self._items.popleft()
                    self.dropped += 1
            self._items.append(item)
            self.put_count += 1
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify_all()
        if dropped is not None and self.on_drop is not None:
            self.on_drop(dropped)
        return True

    def put_urgent(self, item: Any) -> None:
        """Enqueue ahead of the normal items; never dropped, never blocks (control requests)."""
        with self._cond:
            if self._closed:
                raise Closed(self.name)
            self._urgent.append(item)
            self._cond.notify_all()

    def get(self, timeout: Optional[float] = None, newest: bool = False) -> Any:
        """Dequeue an urgent item if any, else the oldest item (or the newest,
        dropping and counting the older ones).

        Raises ``Closed`` once closed and empty; ``TimeoutError`` after ``timeout``.
        """
        skipped = []
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items and not self._urgent:
                if self._closed:
                    raise Closed(self.name)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(self.name)
                self._cond.wait(remaining)
            if self._urgent:
                return self._urgent.popleft()
            if newest:
                while len(self._items) > 1:
                    skipped.append(self._items.popleft())
                    self.dropped += 1
            item = self._items.popleft()
            self._cond.notify_all()
        if self.on_drop is not None:
            for s in skipped:
                self.on_drop(s)
        return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> int:
        """Drop all normal items (not counted as drops); returns how many."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return n
