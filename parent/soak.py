"""The soak's parent: two devices, and a load generator on each bound one.

Every ``PERIOD`` it sends a sync RESET_WARN and an async FW_EVENT whose
``data`` carries ``<pid>:<counter>``, so the driver can check order and
duplicates (``auxipc.SoakLoad`` keeps the figures).
"""

from __future__ import annotations

import os

from auxipc import ParentModel, SoakLoad, handler
from proto.events import Event, FwEvent, FwEventKind, ResetType, ResetWarn, SetMacReply

PERIOD = 0.01


class SoakParent(ParentModel):
    modname = "soak"

    def __init__(self, devices: int = 2):
        super().__init__()
        self.count = devices
        self.load = SoakLoad("parent", self.modname)
        self.counter = 0

    def probe(self) -> None:
        for name in ("a", "b")[:self.count]:
            adev = self.device(name, 0, release=lambda adev: None)
            adev.init()
            adev.add()
        self.rt.call_later(PERIOD, self.tick)
        self.rt.call_later(0.5, self.flush)

    def tick(self) -> None:
        for adev in list(self.rt.devices.values()):
            if not adev.bound:
                continue
            self.counter += 1
            self.load.notify(adev, Event.FW_EVENT, FwEvent(kind=FwEventKind.STATE, state=self.counter % 2**32,
                                                           data=f"{os.getpid()}:{self.counter}".encode()))
            self.load.call(adev, Event.RESET_WARN, ResetWarn(reset_type=ResetType.FUNC))
        self.rt.call_later(PERIOD, self.tick)

    def flush(self) -> None:
        self.load.flush(self.rt)
        self.rt.call_later(0.5, self.flush)

    def remove(self) -> None:
        super().remove()
        self.load.flush(self.rt)

    @handler(Event.SET_MAC)
    def set_mac(self, adev, req) -> SetMacReply:
        self.load.stats["set_mac"] += 1
        return SetMacReply(addr=req.addr, filter_id=1)

    @handler(Event.POST_CONFIG)
    def post_config(self, adev, cfg) -> None:
        self.load.stats["post_config"] += 1
