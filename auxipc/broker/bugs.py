"""Contract bugs seen on the bus, kept for whoever checks a run (the ``auxbus``
fixture asks with the control op ``bugs``).

Two sources: what the broker finds itself (lockdep: an inversion of lock classes,
a wait that would deadlock), and what a peer reports of its own process on its
DEALER (``Runtime.bug``: a sleep in atomic context, an atomic handler over its
budget, a handler that raised, a failed probe, a reference never put, lost async
events). A peer's report carries ``where``, the ``file:line`` in the user's code;
for a bug the broker found, the peer that hit it completes the broker's record
with its ``where`` rather than adding a second one. Each record is published by
whoever already publishes it (a LOCKDEP uevent, the peer's own trace record):
keeping it here adds nothing to the notifications.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Callable

from auxipc.broker.lockdep import describe
from auxipc.broker.records import Peer
from proto import envelope as E
from proto.errno import AuxError, Errno

# Found by the broker, located by the peer whose lock request hit it.
LOCATED_BY_PEER = ("deadlock", "lock_inversion")
# Warned by the broker when the peer leaves (``Bus.warn``); the peer only says where.
LOCATE_ONLY = ("devices_outlive_parent", "uninit_missing")
PEER_BUGS = ("sleep_in_atomic", "atomic_overrun", "handler_exception", "probe_failed", "async_lost",
             "ref_leak", *LOCATED_BY_PEER, *LOCATE_ONLY)


class Bugs:
    def __init__(self, clock: Callable[[], float], stats: Counter):
        self.clock, self.stats = clock, stats
        self.records: deque = deque(maxlen=1000)
        self.located: dict[tuple[str, str], str] = {}     # (peer label, warning kind) -> where

    def where_of(self, warning: dict) -> str:
        """Where in its code the peer a warning names (``parent``) said the bug is; ''."""
        return self.located.get((warning.get("parent", ""), warning.get("kind", "")), "")

    def add(self, kind: str, message: str, dev: str = "", driver: str = "", **detail) -> dict:
        """Keep one bug; counted as ``bug_<kind>``."""
        record = {"kind": kind, "message": message, "dev": dev, "driver": driver, "ts": self.clock(),
                  "where": "", "peer": "", **detail}
        self.records.append(record)
        self.stats[f"bug_{kind}"] += 1
        return record

    def lockdep(self, kind: str, detail: dict) -> None:
        """A lockdep report (``inversion`` or ``deadlock``)."""
        self.add("lock_inversion" if kind == "inversion" else kind, describe(kind, detail),
                 **{k: v for k, v in detail.items() if k in ("task", "lock")})

    def from_peer(self, peer: Peer, msg: E.Uevent) -> None:
        """A peer's BUG record (a UEVENT on its DEALER, answered only if refused)."""
        detail = dict(msg.detail)
        kind, message, where = detail.pop("kind", None), detail.pop("message", ""), detail.pop("where", "")
        if msg.action != "BUG" or kind not in PEER_BUGS or not isinstance(message, str) \
                or not isinstance(where, str):
            raise AuxError(Errno.EINVAL, f"$.header: a peer reports only BUG records (kind one of "
                           f"{', '.join(PEER_BUGS)}; message and where strings), not {msg.action} "
                           f"{str(kind)[:40]!r}")
        if kind in LOCATE_ONLY:
            if len(self.located) < 1000:
                self.located[(peer.label, kind)] = where
            return
        if kind in LOCATED_BY_PEER:
            found = next((b for b in reversed(self.records)
                          if b["kind"] == kind and b["message"] == message and not b["where"]), None)
            if found is not None:
                found.update(where=where, peer=peer.label)
                return
        dev, driver = detail.pop("dev", ""), detail.pop("driver", "")
        self.add(kind, message, dev if isinstance(dev, str) else "", driver if isinstance(driver, str) else "",
                 **{**detail, "where": where, "peer": peer.label})
