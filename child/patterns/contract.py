"""(3) A driver on the proposal's event contract: one handler per event it knows.

Its handlers are announced at bind, so the parent can ask before sending and
the bus refuses what is not there; payloads arrive decoded and range-checked.
"""

from __future__ import annotations

from auxipc import handler
from proto.events import DcbConfig, Ets, Event, RequestReset, ResetType, Tsa

from .common import ScenarioDriver


class ContractEth(ScenarioDriver):
    name = "contract_eth"
    id_table = ["contract.eth"]
    PATTERN = "contract"

    @handler(Event.RESET_WARN)
    def reset_warn(self, adev, warn) -> int:
        self.quiesce(adev)
        return 0

    @handler(Event.RESET_COMPLETE)
    def reset_complete(self, adev, done) -> None:
        self.resume(adev)

    @handler(Event.LINK_CHANGE)
    def link_change(self, adev, link) -> None:
        self.on_link(adev, link.up, link.speed_mbps)

    @handler(Event.BEFORE_TC_CHANGE)
    def before_tc(self, adev, _) -> int:
        self.on_tc(adev, "before")
        return 0

    @handler(Event.AFTER_TC_CHANGE)
    def after_tc(self, adev, qos) -> int:
        self.on_tc(adev, "after", qos.num_tc)
        return 0

    def request_reset(self, adev) -> int:
        adev.call(Event.REQUEST_RESET, RequestReset(reset_type=ResetType.FUNC))
        return 0

    def dcb_set(self, adev, num_tc: int) -> int:
        bw = [100 // num_tc] * num_tc + [0] * (8 - num_tc)
        bw[0] += 100 - sum(bw)
        prio_tc = [min(p, num_tc - 1) for p in range(8)]
        adev.call(Event.DCB_CONFIG, DcbConfig(ets=Ets(tc_tx_bw=bw, tc_rx_bw=bw, tc_tsa=(Tsa.ETS,) * 8,
                                                         prio_tc=prio_tc)))
        return 0
