"""Parent model and aux driver that run the timed loops inside the real auxipc runtimes.

Started by ``bench/run.py`` as::

    python -m auxipc parent --model bench.models:BenchParent --runtime-dir D
    python -m auxipc child  --driver bench.models:BenchDriver --runtime-dir D

and configured through the environment:

- ``AUXB_MODE``  ``c2p``   child loops ``adev.call(SET_MAC)``, the parent answers (an rtnl
                          event: always through the broker);
                 ``c2q``   child loops ``adev.call(QSET_ADD)``, the parent answers (takes the
                          direct lane where ``AUXIPC_LANE`` lets it: bench/run.py's lane cases);
                 ``p2c``   parent loops ``adev.call(RESET_WARN)``, the child answers;
                 ``async`` parent loops ``adev.notify(LINK_CHANGE)``, the child counts.
- ``AUXB_N`` timed iterations, ``AUXB_WARM`` untimed warm-up iterations before them.
- ``AUXB_OUT``   a directory: the side that measures touches ``started`` there when
  its timed part begins and writes ``parent.json`` / ``child.json`` (atomically, via
  rename) when it is done.

The loops start from a timer once the device is bound and the runtime is back in
its main loop (``add()`` / driver registration returned), so they measure steady
state, not registration.
"""

from __future__ import annotations

import json
import os
import time
import traceback

from auxipc import AuxDriver, ChildDevice, ParentDevice, ParentModel, handler
from proto.errno import AuxError
from proto.events import Duplex, Event, LinkChange, QsetParams, QsetReply, ResetType, ResetWarn, SetMac, SetMacReply

from .floors import rt_loop

IDLE_S = 2.0      # async: the child reports what it has after this long without an event


def _cfg() -> tuple[str, int, int, str]:
    env = os.environ
    return (env.get("AUXB_MODE", ""), int(env.get("AUXB_N", "1000")), int(env.get("AUXB_WARM", "100")),
            env.get("AUXB_OUT", ""))


def write_result(name: str, obj: dict) -> None:
    out = _cfg()[3]
    if not out:
        return
    path = os.path.join(out, name)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def mark_started() -> None:
    """An empty ``started`` file: the driver samples every process's CPU time when it appears."""
    out = _cfg()[3]
    if out:
        open(os.path.join(out, "started"), "w").close()


def mac(i: int) -> bytes:
    return bytes((2, 0, 0, (i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF))


def _guarded(name: str, fn) -> None:
    """Run a measurement; any failure is written as the result so the driver sees it at once."""
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - reported, then re-raised
        write_result(name, {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()})
        raise


class BenchParent(ParentModel):
    """Owns ``axb.eth.0``; answers SET_MAC; drives the p2c and async loops."""

    modname = "axb"

    def __init__(self, devices: int = 1):
        super().__init__()
        self.mode, self.n, self.warm, _ = _cfg()
        self.adev: ParentDevice | None = None
        self.started = False

    def probe(self) -> None:
        adev = self.device("eth", 0, release=lambda _adev: None)
        adev.init()
        adev.add()
        self.adev = adev

    def on_bind(self, adev: ParentDevice) -> None:
        if self.mode in ("p2c", "async") and not self.started:
            self.started = True
            self.rt.call_later(0, lambda: self._when_ready(adev))

    def _when_ready(self, adev: ParentDevice) -> None:
        if adev.state != "added" or adev.driver is None:      # add() has not returned yet
            self.rt.call_later(0.005, lambda: self._when_ready(adev))
            return
        _guarded("parent.json", lambda: self._p2c(adev) if self.mode == "p2c" else self._async(adev))

    def _p2c(self, adev: ParentDevice) -> None:
        call, ev, func = adev.call, Event.RESET_WARN, ResetType.FUNC

        def once(i):
            if call(ev, ResetWarn(reset_type=func)) is not None:
                raise RuntimeError("RESET_WARN has no reply payload")
        lat, total = rt_loop(self.warm, self.n, once, mark_started)
        write_result("parent.json", {"lat": lat, "total_ns": total, "stats": self.rt.stats_summary()})

    def _async(self, adev: ParentDevice) -> None:
        notify, ev, full = adev.notify, Event.LINK_CHANGE, Duplex.FULL
        failed = 0

        def send(i):
            nonlocal failed
            try:
                notify(ev, LinkChange(up=True, speed_mbps=i, duplex=full))
            except AuxError:
                failed += 1             # -EAGAIN after 1 s of back-pressure: counted by the runtime too
        for i in range(self.warm):
            send(i)
        mark_started()
        pc = time.perf_counter_ns
        t0, m0 = pc(), time.monotonic_ns()
        for i in range(self.warm, self.warm + self.n):
            send(i)
        t1 = pc()
        write_result("parent.json", {"sent": self.warm + self.n, "timed_n": self.n, "send_ns": t1 - t0,
                                     "t0_mono_ns": m0, "failed": failed, "stats": self.rt.stats_summary()})

    @handler(Event.SET_MAC)
    def set_mac(self, adev: ParentDevice, req) -> SetMacReply:
        a = req.addr
        return SetMacReply(addr=a, filter_id=(a[4] << 8) | a[5])

    @handler(Event.QSET_ADD)
    def qset_add(self, adev: ParentDevice, req) -> QsetReply:
        return QsetReply(teid=req.qs_handle)


class BenchDriver(AuxDriver):
    """Binds ``axb.eth``; drives the c2p loop; answers RESET_WARN; counts LINK_CHANGE."""

    name = "axb_drv"
    id_table = ["axb.eth"]

    def __init__(self):
        self.mode, self.n, self.warm, _ = _cfg()
        self.count = 0
        self.gaps = 0
        self.t_first = self.t_last = self.t_rx = 0
        self.done = False
        self.adev: ChildDevice | None = None

    def probe(self, adev: ChildDevice) -> int:
        self.adev = adev
        if self.mode in ("c2p", "c2q"):
            adev.rt.call_later(0, lambda: self._when_ready(adev))
        elif self.mode == "async":
            adev.rt.call_later(0.25, self._watch)
        return 0

    def _when_ready(self, adev: ChildDevice) -> None:
        if self.name not in adev.rt.registered:                # driver_register has not returned yet
            adev.rt.call_later(0.005, lambda: self._when_ready(adev))
            return
        _guarded("child.json", lambda: self._c2p(adev) if self.mode == "c2p" else self._c2q(adev))

    def _c2p(self, adev: ChildDevice) -> None:
        call, ev = adev.call, Event.SET_MAC

        def once(i):
            reply = call(ev, SetMac(addr=mac(i)))
            if reply.filter_id != i & 0xFFFF:
                raise RuntimeError(f"SET_MAC reply {reply} does not match call {i}")
        lat, total = rt_loop(self.warm, self.n, once, mark_started)
        write_result("child.json", {"lat": lat, "total_ns": total, "stats": adev.rt.stats_summary()})

    def _c2q(self, adev: ChildDevice) -> None:
        call, ev = adev.call, Event.QSET_ADD

        def once(i):
            reply = call(ev, QsetParams(qs_handle=i & 0xFFFF))
            if reply.teid != i & 0xFFFF:
                raise RuntimeError(f"QSET_ADD reply {reply} does not match call {i}")
        lat, total = rt_loop(self.warm, self.n, once, mark_started)
        write_result("child.json", {"lat": lat, "total_ns": total, "stats": adev.rt.stats_summary()})

    @handler(Event.RESET_WARN)
    def reset_warn(self, adev: ChildDevice, warn) -> int:
        return 0

    @handler(Event.LINK_CHANGE)
    def link_change(self, adev: ChildDevice, link) -> None:
        if link.speed_mbps != self.count:
            self.gaps += 1
        self.count += 1
        now = time.monotonic_ns()
        self.t_rx = now
        if self.count == self.warm:
            self.t_first = now
        elif self.count == self.warm + self.n:
            self.t_last = now
            adev.rt.call_later(0, self._report)

    def _watch(self) -> None:
        if self.done:
            return
        if self.count and time.monotonic_ns() - self.t_rx > IDLE_S * 1e9:
            self._report()                  # events stopped short of warm + n: report the loss
            return
        self.adev.rt.call_later(0.25, self._watch)

    def _report(self) -> None:
        if self.done:
            return
        self.done = True
        write_result("child.json", {"received": self.count, "gaps": self.gaps, "t_first_ns": self.t_first,
                                    "t_last_ns": self.t_last or self.t_rx,
                                    "timed_n": max(self.count - self.warm, 0),
                                    "complete": self.count == self.warm + self.n,
                                    "stats": self.adev.rt.stats_summary()})
