"""(3) The proposal's event contract: auxipc's own events, nothing added.

One enum, one payload per event, both directions symmetric: the driver's
handlers are announced at bind (discovery), an event it has no handler for is
-EOPNOTSUPP from the bus before anything is delivered, sync events run under
the driver's device_lock and rtnl events (DCB_CONFIG) under rtnl, taken by the
bus. The parent sends to a bound driver only: the bus tells it when the driver
goes (UNBIND), and notify() refuses with -ENODEV after that.
"""

from __future__ import annotations

from auxipc import handler
from proto.events import Event, LinkChange, Qos, ResetComplete, ResetType, ResetWarn
from proto.payloads import ALL_ON_TC0

from .common import ScenarioParent


class ContractParent(ScenarioParent):
    modname = "contract"
    PATTERN = "contract"

    @handler(Event.REQUEST_RESET)
    def request_reset(self, adev, req) -> int:
        return self.accept_reset(adev)

    @handler(Event.DCB_CONFIG)
    def dcb_config(self, adev, cfg) -> int:
        return self.dcb_request(adev, max(cfg.ets.prio_tc) + 1)

    def warn(self, adev):
        self.call(adev, Event.RESET_WARN, ResetWarn(reset_type=ResetType.FUNC))
        return 0

    def done(self, adev):
        self.notify(adev, Event.RESET_COMPLETE, ResetComplete(reset_type=ResetType.FUNC, status=0))
        return 0

    def link(self, adev, up: bool, speed: int):
        self.notify(adev, Event.LINK_CHANGE, LinkChange(up=up, speed_mbps=speed if up else -1))
        return 0

    def tc_change(self, adev, num_tc: int):
        self.call(adev, Event.BEFORE_TC_CHANGE)
        bw = [100 // num_tc] * num_tc + [0] * (8 - num_tc)
        bw[0] += 100 - sum(bw)
        self.call(adev, Event.AFTER_TC_CHANGE, Qos(num_tc=num_tc, up2tc=[min(p, num_tc - 1) for p in range(8)],
                                                   rel_bw=bw if num_tc > 1 else ALL_ON_TC0))
        return 0

    def unknown(self, adev):
        self.call(adev, Event.POST_INIT)        # this driver has no handler for it
        return 0

    def bench_one(self, adev) -> None:
        self.call(adev, Event.BEFORE_TC_CHANGE)
