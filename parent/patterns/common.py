"""The scenario every pattern's parent plays, whatever carries its events.

A step is asked for by the driver (PATTERN_STEP: the harness's control channel,
a user poking the driver) and run from a worker, as a PCI driver's service task
would; its outcome is published as a ``PATTERN`` trace record. The reset is
the same for all three: warn the driver (it quiesces before it returns), reset
the hardware, tell the driver it is done (it resumes). The pattern subclass
says how each of those reaches the driver: ``warn``, ``done``, ``link``,
``tc_change``, ``unknown``, ``bench_one``; it reports what its own code got
back (``seen``), the bus's side of each call is in the bus's CALL records.
"""

from __future__ import annotations

import time

from auxipc import ParentModel, handler
from proto.errno import AuxError

RESET_TIME = 0.02      # seconds the emulated hardware takes to reset
NOTICE_WAIT = 0.05     # how long the reset worker lets the bus's notices in after a failed warn


class ScenarioParent(ParentModel):
    PATTERN = ""

    def __init__(self, devices: int = 1):
        super().__init__()
        self.adev = None
        self.num_tc = 1
        self.resets = 0
        self.bus_log: list[dict] = []     # what each send of the running step met on the bus

    def probe(self) -> None:
        self.adev = self.device("eth", self.index, release=lambda adev: None)
        self.adev.init()
        self.adev.add()

    def report(self, step: str, **fields) -> None:
        self.rt.report("PATTERN", pattern=self.PATTERN, side="parent", step=step, **fields)

    def on_bind(self, adev) -> None:
        names = sorted(self.rt.catalog.get(c).name for c in adev.child_handles if self.rt.catalog.get(c))
        self.report("bind", handles=names)

    # ---- sending: every pattern's calls go through these, so the bus's answer is kept ----

    def call(self, adev, event, payload=None):
        """A sync call; whatever the bus answered is logged, then returned or raised."""
        return self._send_logged(event, True, lambda: adev.call(event, payload))

    def notify(self, adev, event, payload=None):
        """An async event; refused here, unsent, once the bus said the driver is gone."""
        return self._send_logged(event, adev.bound and adev.supports(event), lambda: adev.notify(event, payload))

    def _send_logged(self, event, sent: bool, send):
        """``send()``, its outcome in the bus log: ``sent`` says whether a refusal left the process."""
        try:
            out = send()
        except AuxError as exc:
            self.bus_log.append({"event": self._name(event), "sent": sent, "errno": exc.name})
            raise
        self.bus_log.append({"event": self._name(event), "sent": True, "errno": 0})
        return out

    def publish(self, adev, event, payload) -> None:
        """Publish to the device's topic whoever listens (an atomic notifier chain's walk)."""
        self.rt.publish_event(adev.dev_id, adev.topic, self.rt.spec_to_send(event), payload)
        self.bus_log.append({"event": self._name(event), "sent": True, "errno": 0})

    def _name(self, event) -> str:
        return self.rt.catalog.lookup(event).name

    def _logged(self, fn, *args) -> tuple:
        """(what the pattern's code got back, what its sends met on the bus)."""
        self.bus_log = []
        seen = self._seen(fn, *args)
        return seen, self.bus_log

    # ---- the control channel ----

    @handler("PATTERN_STEP")
    def pattern_step(self, adev, req) -> int:
        self.rt.call_later(0, lambda: self.run_step(adev, req.step, req.n))
        return 0

    def run_step(self, adev, step: str, n: int) -> None:
        if step == "bench":
            self.bus_log, us = [], []
            for _ in range(n):
                t0 = time.perf_counter()
                self.bench_one(adev)
                us.append((time.perf_counter() - t0) * 1e6)
            self.report("bench", n=n, us=[round(x, 1) for x in us])
        elif step == "link":
            down, down_bus = self._logged(self.link, adev, False, 0)
            up, up_bus = self._logged(self.link, adev, True, 100_000)
            self.report("link", down=down, up=up, bus=down_bus + up_bus)
        elif step == "unknown":
            seen, bus = self._logged(self.unknown, adev)
            self.report("unknown", seen=seen, bus=bus)
        else:
            self.report(step, error=f"no step {step!r}")

    def _seen(self, fn, *args):
        """What the pattern's own code got back from ``fn``; an error the bus raised
        instead is kept by its name (the bus's CALL record has the errno too)."""
        try:
            return fn(*args)
        except AuxError as exc:
            return f"-{exc.name} (raised)"

    # ---- reset (asked for by the driver through the pattern's child->parent path) ----

    def accept_reset(self, adev) -> int:
        """Accepted at once; the reset runs from a worker (ice_rdma_request_reset)."""
        self.rt.call_later(0, lambda: self.reset(adev))
        return 0

    def reset(self, adev) -> None:
        self.resets += 1
        warn, warn_bus = self._logged(self.warn, adev)
        t_warned = time.monotonic()
        end = time.monotonic() + (RESET_TIME if warn in (0, None, "ignored") else NOTICE_WAIT)
        while (left := end - time.monotonic()) > 0:
            self.rt.pump(left)
        done, done_bus = self._logged(self.done, adev)
        self.report("reset", n=self.resets, warn=warn, warn_bus=warn_bus, t_warned=t_warned, done=done,
                    done_bus=done_bus, bound=adev.bound)

    # ---- DCB (asked for by the driver under rtnl) ----

    def dcb_request(self, adev, num_tc: int) -> int:
        """The DCB request as it reached the parent: program it, and change the driver's
        traffic classes from a worker that does not hold rtnl (never take a driver's
        device_lock under rtnl). Reports whether the bus had rtnl held for the call."""
        rtnl = self.rt.task in self.rt.contexts.held.get("rtnl", [])
        self.report("dcb_request", rtnl_held_by_bus=rtnl, num_tc=num_tc)
        self.num_tc = num_tc
        self.rt.call_later(0, lambda: self._tc_worker(adev, num_tc))
        return 0

    def _tc_worker(self, adev, num_tc: int) -> None:
        seen, bus = self._logged(self.tc_change, adev, num_tc)
        self.report("dcb", tc_change=seen, bus=bus)

    # ---- what a pattern provides ----

    def warn(self, adev):
        raise NotImplementedError

    def done(self, adev):
        raise NotImplementedError

    def link(self, adev, up: bool, speed: int):
        raise NotImplementedError

    def tc_change(self, adev, num_tc: int):
        raise NotImplementedError

    def unknown(self, adev):
        raise NotImplementedError

    def bench_one(self, adev) -> None:
        raise NotImplementedError
