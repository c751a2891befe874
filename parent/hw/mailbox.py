"""The FW mailbox (admin queue / virtchnl): requests answered after a latency, or never.

    DOWN --init--> READY --shutdown--> DOWN       (a reset shuts it down; the rebuild inits it again)
    READY: send -> a transaction answered ``latency`` seconds later

A transaction is polled with the current time (the hardware has no clock of
its own, so tests drive it): answered once its due time passed; -ETIME at its
deadline when the FW did not answer (a hung FW answers nothing); -ENXIO when
the mailbox was shut down while it waited (a reset in the middle of a request,
idpf_vc_xn_shutdown) or when it is down at send. The INIT request is the one a
DOWN mailbox takes (the rebuild's first command).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import Enum

from auxipc import IllegalTransition, Machine
from proto.errno import AuxError, Errno


class MbxState(Enum):
    DOWN = "down"
    READY = "ready"


MBX_TABLE = {
    MbxState.DOWN: {"init": MbxState.READY, "shutdown": MbxState.DOWN},
    MbxState.READY: {"send": MbxState.READY, "shutdown": MbxState.DOWN},
}
MBX_ILLEGAL = {MbxState.DOWN: Errno.ENXIO, MbxState.READY: Errno.EBUSY}


class XnState(Enum):
    PENDING = "pending"
    DONE = "done"
    SHUTDOWN = "shutdown"
    TIMEOUT = "timeout"


@dataclass
class Xn:
    id: int
    op: str
    sent: float
    due: float | None          # when the FW answers (None: it never will)
    deadline: float
    state: XnState = XnState.PENDING
    why: str = ""

    def wake_in(self, now: float) -> float:
        """Seconds until polling could give a different answer."""
        until = self.deadline if self.due is None else min(self.due, self.deadline)
        return max(0.0, until - now)


class Mailbox:
    def __init__(self, who: str, latency: float = 0.001, timeout: float = 1.0):
        self.m = Machine("mailbox of", who, MBX_TABLE, MbxState.DOWN, MBX_ILLEGAL)
        self.latency, self.timeout = latency, timeout
        self._fw_hang = False
        self.down_reason = "not initialised"
        self.pending: dict[int, Xn] = {}
        self._ids = itertools.count(1)
        self.stats = {"sent": 0, "answered": 0, "timeouts": 0, "shutdown": 0}

    @property
    def state(self) -> MbxState:
        return self.m.state

    @property
    def fw_hang(self) -> bool:
        return self._fw_hang

    @fw_hang.setter
    def fw_hang(self, hung: bool) -> None:
        """A hung FW answers nothing, including what it had not answered yet."""
        self._fw_hang = bool(hung)
        if hung:
            for xn in self.pending.values():
                xn.due = None

    def send(self, op: str, now: float, timeout: float | None = None) -> Xn:
        if op == "INIT":
            if self.state is MbxState.READY:
                raise IllegalTransition(Errno.EBUSY, "mailbox of", self.m.who, self.state, "init")
        else:
            try:
                self.m.fire("send")
            except IllegalTransition:
                raise AuxError(Errno.ENXIO, f"{op}: the FW mailbox is shut down ({self.down_reason})") from None
        limit = self.timeout if timeout is None else min(timeout, self.timeout)
        xn = Xn(next(self._ids), op, now, None if self._fw_hang else now + self.latency, now + limit)
        self.pending[xn.id] = xn
        self.stats["sent"] += 1
        return xn

    def poll(self, xn: Xn, now: float) -> bool:
        """True once answered; False while waiting; raises -ENXIO or -ETIME."""
        if xn.state is XnState.SHUTDOWN:
            raise AuxError(Errno.ENXIO, f"{xn.op}: the FW mailbox was shut down while the request waited "
                           f"({xn.why})")
        if xn.state is XnState.DONE:
            return True
        if xn.due is not None and now >= xn.due:
            xn.state = XnState.DONE
            self.pending.pop(xn.id, None)
            self.stats["answered"] += 1
            if xn.op == "INIT":
                self.m.fire("init")
            return True
        if now >= xn.deadline:
            xn.state = XnState.TIMEOUT
            self.pending.pop(xn.id, None)
            self.stats["timeouts"] += 1
            raise AuxError(Errno.ETIME, f"{xn.op}: the FW did not answer within "
                           f"{(xn.deadline - xn.sent) * 1000:.0f} ms")
        return False

    def shutdown(self, why: str) -> int:
        """Take the mailbox down (a reset starts): waiting transactions fail -ENXIO."""
        self.m.fire("shutdown")
        self.down_reason = why
        n = 0
        for xn in list(self.pending.values()):
            if xn.op != "INIT":
                xn.state, xn.why = XnState.SHUTDOWN, why
                del self.pending[xn.id]
                n += 1
        self.stats["shutdown"] += n
        return n
