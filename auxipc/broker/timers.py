"""The bus's timers: a heap of deadlines driven by the clock the bus is given.

Nothing here sleeps: ``fire_due(now)`` runs what is due, ``next_due()`` tells
the broker how long it may block in poll.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable


class Timer:
    """``fn(*args)`` due at ``when``; ``fn`` is None once cancelled or fired. Ordered
    by (when, seq): two timers due at once fire in the order they were set."""

    __slots__ = ("when", "seq", "fn", "args")

    def __init__(self, when: float, seq: int, fn: Callable[..., object] | None, args: tuple):
        self.when, self.seq, self.fn, self.args = when, seq, fn, args

    def __lt__(self, other: "Timer") -> bool:
        return self.when < other.when or (self.when == other.when and self.seq < other.seq)

    @property
    def live(self) -> bool:
        return self.fn is not None


class Timers:
    def __init__(self):
        self.heap: list[Timer] = []
        self._cancelled = 0     # cancelled timers still in the heap (a call's deadline, mostly)
        self._seq = itertools.count()

    def at(self, when: float, fn: Callable[..., object], *args) -> Timer:
        timer = Timer(when, next(self._seq), fn, args)
        heapq.heappush(self.heap, timer)
        return timer

    def cancel(self, timer: Timer | None) -> None:
        """Cancel a timer: it never runs, and never wakes the broker. Nearly every call's
        deadline is cancelled: once they are most of the heap it is rebuilt without them,
        so it stays the size of what is live (pushes and pops stay cheap)."""
        if timer is not None and timer.fn is not None:
            timer.fn = None
            self._cancelled += 1
            if self._cancelled > 64 and 2 * self._cancelled > len(self.heap):
                self.heap = [t for t in self.heap if t.fn is not None]
                heapq.heapify(self.heap)
                self._cancelled = 0

    def next_due(self) -> float | None:
        heap = self.heap
        while heap and heap[0].fn is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        return heap[0].when if heap else None

    def fire_due(self, now: float) -> None:
        # self.heap, not a local: a callback's cancel() may rebuild the heap.
        while self.heap and self.heap[0].when <= now:
            timer = heapq.heappop(self.heap)
            fn = timer.fn
            if fn is None:
                self._cancelled -= 1
                continue
            timer.fn = None      # fired: a later cancel() is a no-op
            fn(*timer.args)
