"""device_lock for one auxiliary device, held across a request to another process.

The kernel holds ``device_lock(dev)`` across probe, remove and every event
delivery. Here those are requests to the child process that complete later, so
the lock is a FIFO of operations: the owner runs until it calls ``release``,
then the next one starts. An operation queued behind it can be cancelled
(its caller timed out or died, or the device was deleted) and is skipped.
"""

from __future__ import annotations

from collections import deque
from typing import Callable


class LockedOp:
    __slots__ = ("what", "start", "cancel", "cancelled", "started")

    def __init__(self, what: str, start: Callable[["LockedOp"], None],
                 cancel: Callable[[str], None] | None = None):
        self.what = what
        self.start = start          # called with the lock held; must lead to DeviceLock.release(op)
        self.cancel = cancel        # called if the op is dropped before it starts
        self.cancelled = False
        self.started = False


class DeviceLock:
    __slots__ = ("owner", "queue", "_kicking")

    def __init__(self):
        self.owner: LockedOp | None = None
        self.queue: deque[LockedOp] = deque()
        self._kicking = False

    def run(self, op: LockedOp) -> None:
        self.queue.append(op)
        self._kick()

    def release(self, op: LockedOp) -> None:
        if self.owner is op:
            self.owner = None
            self._kick()

    def cancel_queued(self, reason: str, keep: Callable[[LockedOp], bool] = lambda op: False) -> None:
        """Drop every queued (not started) op, telling each why, except those ``keep`` spares."""
        kept: deque[LockedOp] = deque()
        while self.queue:
            op = self.queue.popleft()
            if keep(op):
                kept.append(op)
            elif not op.cancelled:
                op.cancelled = True
                if op.cancel:
                    op.cancel(reason)
        self.queue = kept

    @property
    def busy(self) -> bool:
        return self.owner is not None

    def _kick(self) -> None:
        if self._kicking:
            return
        self._kicking = True
        try:
            while self.owner is None and self.queue:
                op = self.queue.popleft()
                if op.cancelled:
                    continue
                self.owner = op
                op.started = True
                op.start(op)
        finally:
            self._kicking = False
