"""The soak's drivers: they check what reaches them and load the parent back.

Invariant checks in every delivery: the device is bound (no event reaches an
unbound driver); FW_EVENT ``data`` counters per sender process only grow (no
duplicate, per-device order held). Each bound device sends SET_MAC (sync) and
POST_CONFIG (async) every ``PERIOD``; probe takes a device reference and
remove puts it, so the soak can check that every reference comes back.
"""

from __future__ import annotations

from auxipc import AuxDriver, SoakLoad, handler
from proto.errno import AuxError
from proto.events import Event, PostConfig, SetMac

PERIOD = 0.01


class SoakDriver(AuxDriver):
    name = "soak_a"
    id_table = ["soak.a"]

    def __init__(self):
        self.load = SoakLoad("child", self.name)
        self.stats = self.load.stats
        self.last: dict = {}           # (device, sender pid) -> last counter
        self.ticking = False

    def probe(self, adev):
        adev.get()
        self.stats["probes"] += 1
        if not self.ticking:
            self.ticking = True
            adev.rt.call_later(PERIOD, lambda: self.tick(adev.rt))
            adev.rt.call_later(0.5, lambda: self.flush(adev.rt))
        return 0

    def remove(self, adev):
        self.stats["removes"] += 1
        try:
            adev.put()
        except AuxError as exc:
            self.stats[f"put_{exc.name}"] += 1

    def _check(self, adev, what: str) -> None:
        if not adev.bound:
            self.stats["violation_unbound_delivery"] += 1
        self.stats[what] += 1

    @handler(Event.RESET_WARN)
    def reset_warn(self, adev, warn):
        self._check(adev, "reset_warn")

    @handler(Event.FW_EVENT)
    def fw_event(self, adev, ev):
        self._check(adev, "fw_event")
        pid, _, n = ev.data.decode().partition(":")
        key = (adev.name, pid)
        n = int(n)
        last = self.last.get(key, 0)
        if n == last:
            self.stats["violation_duplicate"] += 1
        elif n < last:
            self.stats["violation_order"] += 1
        self.last[key] = max(n, last)

    def tick(self, rt) -> None:
        for adev in [d for d in rt.devices.values() if d.driver is self]:
            self.load.notify(adev, Event.POST_CONFIG, PostConfig(vport_id=1))
            self.load.call(adev, Event.SET_MAC, SetMac(addr=b"\x02\x00\x00\x00\x00\x01"))
        rt.call_later(PERIOD, lambda: self.tick(rt))

    def flush(self, rt) -> None:
        self.load.flush(rt)
        rt.call_later(0.5, lambda: self.flush(rt))


class SoakDriverB(SoakDriver):
    name = "soak_b"
    id_table = ["soak.b"]
