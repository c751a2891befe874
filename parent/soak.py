"""The soak's parent: two devices, and a load generator on each bound one.

Every ``period`` it sends a sync RESET_WARN (deadline ``timeout``) and an async
FW_EVENT whose ``data`` carries ``<pid>:<counter>`` so the child can check
order and duplicates. It records each call's duration against its deadline and
writes its figures to ``$AUXIPC_SOAK_DIR/parent-<pid>.json`` twice a second (a
SIGKILLed process cannot write at exit).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter

from proto.errno import AuxError, errno_name
from proto.events import Event, FwEvent, FwEventKind, ResetType, ResetWarn, SetMacReply
from auxipc.handlers import handler
from .runtime import ParentModel

PERIOD = 0.01
TIMEOUT = 1.0
GRACE = 0.5


class SoakParent(ParentModel):
    modname = "soak"

    def __init__(self, devices: int = 2):
        super().__init__()
        self.count = devices
        self.stats = Counter()
        self.worst_overrun = 0.0
        self.counter = 0
        self.out = os.environ.get("AUXIPC_SOAK_DIR")

    def probe(self) -> None:
        for i, name in enumerate(("a", "b")[:self.count]):
            adev = self.device(name, 0, release=lambda adev: None)
            adev.init()
            adev.add()
        self.rt.call_later(PERIOD, self.tick)
        self.rt.call_later(0.5, self.flush)

    def on_restored(self) -> None:
        self.stats["restored"] += 1

    def tick(self) -> None:
        for adev in list(self.rt.devices.values()):
            if not adev.bound:
                continue
            self.counter += 1
            try:
                adev.notify(Event.FW_EVENT, FwEvent(kind=FwEventKind.STATE, state=self.counter % 2**32,
                                                    data=f"{os.getpid()}:{self.counter}".encode()))
                self.stats["async_sent"] += 1
            except AuxError as exc:
                self.stats[f"async_{errno_name(exc.errno)}"] += 1
            t0 = time.monotonic()
            try:
                adev.call(Event.RESET_WARN, ResetWarn(reset_type=ResetType.FUNC), timeout=TIMEOUT)
                self.stats["calls_ok"] += 1
            except AuxError as exc:
                self.stats[f"calls_{errno_name(exc.errno)}"] += 1
            took = time.monotonic() - t0
            self.stats["calls"] += 1
            if took > TIMEOUT + GRACE:
                self.stats["deadline_overruns"] += 1
            self.worst_overrun = max(self.worst_overrun, took - TIMEOUT)
        self.rt.call_later(PERIOD, self.tick)

    def flush(self) -> None:
        if self.out:
            data = {"role": "parent", "pid": os.getpid(), "stats": dict(self.stats),
                    "worst_overrun_s": self.worst_overrun, "runtime": dict(self.rt.stats)}
            tmp = os.path.join(self.out, f".parent-{os.getpid()}.json")
            with open(tmp, "w") as f:
                json.dump(data, f)
            os.replace(tmp, os.path.join(self.out, f"parent-{os.getpid()}.json"))
        self.rt.call_later(0.5, self.flush)

    def remove(self) -> None:
        super().remove()
        if self.out:
            self.flush()

    @handler(Event.SET_MAC)
    def set_mac(self, adev, req) -> SetMacReply:
        self.stats["set_mac"] += 1
        return SetMacReply(addr=req.addr, filter_id=1)

    @handler(Event.POST_CONFIG)
    def post_config(self, adev, cfg) -> None:
        self.stats["post_config"] += 1
