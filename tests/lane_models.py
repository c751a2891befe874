"""Parent model and driver for the direct-lane tests (tests/test_lane.py).

``LaneParent`` (a ``Pair``: ``tp.eth.0`` and ``tp.rdma.0``) answers QSET_ADD with
``teid = qs_handle`` and logs each call with whether the device was still bound
when it ran; ``$AXL_PUMP`` seconds it serves other messages first (a slow handler
that still sees revokes), ``$AXL_SLEEP`` seconds it blocks (a handler to be killed
in). ``LaneDrv`` binds ``tp.eth``; once registered it calls QSET_ADD ``$AXL_CALLS``
times from its main loop (0: until a call fails), logging each call's errno and
whether it went over the lane (``via``); its RESET_WARN handler makes one nested
QSET_ADD call.
"""

from __future__ import annotations

import os
import time

from auxipc import AuxDriver, handler
from proto.errno import AuxError, errno_name
from proto.events import Event, QsetParams, QsetReply

from .models import Pair, _pump_for, log


class LaneParent(Pair):
    @handler(Event.QSET_ADD)
    def qset_add(self, adev, req) -> QsetReply:
        log("QSET_ADD", dev=adev.name, qs=req.qs_handle, bound=adev.driver is not None, task=self.rt.task)
        pump = float(os.environ.get("AXL_PUMP", "0"))
        if pump:
            log("slow-start", qs=req.qs_handle)
            _pump_for(self.rt, pump)
        sleep = float(os.environ.get("AXL_SLEEP", "0"))
        if sleep:
            log("sleep-start", qs=req.qs_handle)
            time.sleep(sleep)
        return QsetReply(teid=req.qs_handle)


def _call(adev, qs: int) -> tuple[str, str, str]:
    """One QSET_ADD: (errno name or '', message, 'lane' or 'broker')."""
    stats = adev.rt.stats
    before = stats["lane_calls"]
    try:
        reply = adev.call(Event.QSET_ADD, QsetParams(qs_handle=qs), timeout=float(os.environ.get("AXL_TIMEOUT", "5")))
        if reply.teid != qs:
            raise AssertionError(f"QSET_ADD reply {reply} for call {qs}")
        e, m = "", ""
    except AuxError as exc:
        e, m = errno_name(exc.errno), exc.message
    return e, m, "lane" if stats["lane_calls"] > before else "broker"


class LaneDrv(AuxDriver):
    name = "ldrv"
    id_table = ["tp.eth"]

    def __init__(self):
        self.calls = int(os.environ.get("AXL_CALLS", "1"))
        self.rounds = int(os.environ.get("AXL_ROUNDS", "1"))    # after a round ends in an error, another
        self.round = 0
        self.started = False

    def probe(self, adev):
        log("probe", dev=adev.name)
        if not self.started:
            self.started = True
            adev.rt.call_later(0, lambda: self._when_ready(adev))
        return 0

    def remove(self, adev) -> None:
        log("remove", dev=adev.name)

    def _when_ready(self, adev) -> None:
        if self.name not in adev.rt.registered:            # driver_register has not returned yet
            adev.rt.call_later(0.005, lambda: self._when_ready(adev))
            return
        self.round += 1
        log("calls-start", dev=adev.name, round=self.round)
        i, e = 0, ""
        while self.calls == 0 or i < self.calls:
            e, m, via = _call(adev, i & 0xFFFF)
            log("call", i=i, e=e, m=m, via=via, round=self.round)
            i += 1
            if e:
                break
        log("calls-end", n=i, round=self.round,
            stats={k: v for k, v in adev.rt.stats.items() if k.startswith("lane")})
        if e and self.round < self.rounds:
            adev.rt.call_later(0.1, lambda: self._again(adev.rt))

    def _again(self, rt) -> None:
        """The next round, on whichever device this driver has bound by then."""
        bound = [d for d in rt.devices.values() if d.driver is self]
        if not bound:
            rt.call_later(0.05, lambda: self._again(rt))
            return
        self._when_ready(bound[0])

    @handler(Event.RESET_WARN)
    def reset_warn(self, adev, warn) -> int:
        e, m, via = _call(adev, 4242)
        log("nested", e=e, m=m, via=via)
        return 0
