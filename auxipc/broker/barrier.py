"""The broker's per-message barrier: what happens when handling one message raises.

An unexpected exception is the broker's bug, not the peer's: the message is
answered -EPROTO, the exception counted and logged once per place with its
traceback, and the broker goes on. Logs of bad input are rate-limited, so a flood
of malformed messages costs a line every few seconds, not one a message.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter

from proto import envelope as E
from proto.errno import ProtocolError

log = logging.getLogger("auxipc.broker")

LOG_EVERY = 10.0             # seconds: at most one line per kind of bad input in this time


class LogLimiter:
    """At most one log line per kind of trouble each ``every`` seconds; the lines left
    out are counted and the count goes out with the next line of that kind. A flood of
    bad messages costs a line every few seconds, not one a message."""

    def __init__(self, every: float = LOG_EVERY, clock=time.monotonic):
        self.every, self.clock = every, clock
        self._last: dict[str, float] = {}
        self.suppressed: Counter = Counter()

    def __call__(self, kind: str, level: int, fmt: str, *args, exc_info=None) -> bool:
        now = self.clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.every:
            self.suppressed[kind] += 1
            return False
        self._last[kind] = now
        left_out = self.suppressed.pop(kind, 0)
        if left_out:
            fmt += " (%d more like it in the last %.0f s not logged)"
            args = (*args, left_out, now - last)
        log.log(level, fmt, *args, exc_info=exc_info)
        return True


class Barrier:
    """Logs the unexpected exceptions of message handling: the traceback the first
    time one happens at a place (type, file, line), a rate-limited line after that."""

    def __init__(self, limit_log: LogLimiter, max_sites: int = 1000):
        self.limit_log, self.max_sites = limit_log, max_sites
        self._sites: set[tuple] = set()

    def log(self, exc: BaseException, where: str) -> None:
        tb = traceback.extract_tb(exc.__traceback__)
        site = (type(exc).__name__, tb[-1].filename, tb[-1].lineno) if tb else (type(exc).__name__,)
        first = site not in self._sites
        if first and len(self._sites) < self.max_sites:
            self._sites.add(site)
        self.limit_log("internal:" + ":".join(map(str, site)), logging.ERROR,
                       "internal error handling %s: %s: %s (answered -EPROTO; the broker goes on)",
                       where, type(exc).__name__, str(exc)[:200], exc_info=exc if first else None)


def guess_r(body: list[bytes]) -> int:
    """The request id of a message whose handling failed, if its header can be read; else 0."""
    try:
        head = E.unpackb(body[0][4:], "$.header")
        r = head.get("r", 0)
        return r if type(r) is int and 0 <= r <= 2**53 else 0
    except (ProtocolError, IndexError, AttributeError, TypeError):
        return 0
