"""(2) irdma-style driver: an ops struct with one event_handler, the parent's ops to call.

The handler takes the event bitmap and returns void: a bit it does not know is
ignored and the parent never hears of it. Requests go through the parent's ops
struct by slot (ice_rdma_request_reset, a DCB op).
"""

from __future__ import annotations

import struct

from auxipc import handler

from .common import ScenarioDriver

DRV_EVENT_HANDLER = 0
OP_REQUEST_RESET, OP_DCB_SETETS = 0, 1
IIDC_EVENT_BEFORE_TC_CHANGE, IIDC_EVENT_AFTER_TC_CHANGE = 1 << 2, 1 << 3
IIDC_EVENT_WARN_RESET, IIDC_EVENT_LINK_CHANGE, IIDC_EVENT_RESET_DONE = 1 << 4, 1 << 6, 1 << 7
EVENT = struct.Struct("<I I B I B8B")


class IrdmaOps(ScenarioDriver):
    name = "irdma_ops"
    id_table = ["iceops.eth"]
    PATTERN = "ops"

    def op(self, adev, slot: int, data: bytes) -> int:
        return adev.call("OPS_CALL", {"slot": slot, "data": data}).ret

    @handler("OPS_CALL")
    def event_handler(self, adev, call):
        if call.slot != DRV_EVENT_HANDLER:
            return {"ret": 0}
        kind, _reset_type, up, speed, num_tc, *_up2tc = EVENT.unpack(call.data)
        if kind & IIDC_EVENT_WARN_RESET:
            self.quiesce(adev)
        if kind & IIDC_EVENT_RESET_DONE:
            self.resume(adev)
        if kind & IIDC_EVENT_LINK_CHANGE:
            self.on_link(adev, up, speed)
        if kind & IIDC_EVENT_BEFORE_TC_CHANGE:
            self.on_tc(adev, "before")
        if kind & IIDC_EVENT_AFTER_TC_CHANGE:
            self.on_tc(adev, "after", num_tc)
        return {"ret": 0}

    def request_reset(self, adev) -> int:
        return self.op(adev, OP_REQUEST_RESET, struct.pack("<I", 1))

    def dcb_set(self, adev, num_tc: int) -> int:
        return self.op(adev, OP_DCB_SETETS, bytes([num_tc]))
