"""(2) ice/irdma-style: each side exports a fixed ops struct of function pointers.

As ice and irdma do (iidc_rdma.h, ice_idc.c): the parent calls the driver's
``event_handler(cdev, struct iidc_event *)`` with an event bitmap, after
finding the driver through ``adev->dev.driver`` under device_lock and checking
the pointer is not NULL; the handler returns void. The driver calls the
parent's ops (``ice_rdma_request_reset`` and a DCB op here), each returning
an int. Both structs are fixed at build time: a slot is an index both sides
compiled in, its arguments a packed struct (OPS_CALL).
"""

from __future__ import annotations

import struct

from auxipc import handler
from proto.errno import AuxError, Errno

from .common import ScenarioParent

# The driver's ops struct: one slot.
DRV_EVENT_HANDLER = 0
# The parent's ops struct.
OP_REQUEST_RESET, OP_DCB_SETETS = 0, 1

# enum iidc_rdma_event_type: bits of the event bitmap
IIDC_EVENT_BEFORE_TC_CHANGE, IIDC_EVENT_AFTER_TC_CHANGE = 1 << 2, 1 << 3
IIDC_EVENT_WARN_RESET, IIDC_EVENT_LINK_CHANGE, IIDC_EVENT_RESET_DONE = 1 << 4, 1 << 6, 1 << 7
IIDC_EVENT_PTP = 1 << 12                  # newer than the driver: it does not know it

EVENT = struct.Struct("<I I B I B8B")     # struct iidc_event { u32 type; u32 reset_type; u8 up; u32 speed;
                                          #   u8 num_tc; u8 up2tc[8]; }


def iidc_event(kind: int, reset_type=0, up=0, speed=0, num_tc=0) -> bytes:
    up2tc = [min(p, num_tc - 1) if num_tc else 0 for p in range(8)]
    return EVENT.pack(kind, reset_type, up, speed, num_tc, *up2tc)


class IceOps(ScenarioParent):
    modname = "iceops"
    PATTERN = "ops"

    def send_event_to_aux(self, adev, data: bytes):
        """ice_send_event_to_aux: only to a bound driver (``adev->dev.driver``) whose
        event_handler is not NULL; it returns void."""
        if not adev.bound:
            return "skipped: no driver"
        if not adev.supports("OPS_CALL"):
            return "skipped: NULL ops"
        try:
            self.call(adev, "OPS_CALL", {"slot": DRV_EVENT_HANDLER, "data": data})
        except AuxError:
            pass                  # void: whatever happened in the driver, ice cannot learn it
        return None

    # ---- the parent's ops struct, as the driver calls it ----

    @handler("OPS_CALL")
    def ops(self, adev, call):
        if call.slot == OP_REQUEST_RESET:
            reset_type = struct.unpack("<I", call.data)[0]
            if reset_type not in (1, 2):          # FUNC -> PFR, DEV -> CORER
                return {"ret": -Errno.EINVAL}
            return {"ret": self.accept_reset(adev)}
        if call.slot == OP_DCB_SETETS:
            return {"ret": self.dcb_request(adev, call.data[0])}
        raise AuxError(Errno.EFAULT, f"slot {call.slot} of ice's ops struct is past its end")

    # ---- the scenario, as ice sends it ----

    def warn(self, adev):
        return self.send_event_to_aux(adev, iidc_event(IIDC_EVENT_WARN_RESET, reset_type=1))

    def done(self, adev):
        return self.send_event_to_aux(adev, iidc_event(IIDC_EVENT_RESET_DONE, reset_type=1))

    def link(self, adev, up: bool, speed: int):
        return self.send_event_to_aux(adev, iidc_event(IIDC_EVENT_LINK_CHANGE, up=up, speed=speed))

    def tc_change(self, adev, num_tc: int):
        self.send_event_to_aux(adev, iidc_event(IIDC_EVENT_BEFORE_TC_CHANGE))
        return self.send_event_to_aux(adev, iidc_event(IIDC_EVENT_AFTER_TC_CHANGE, num_tc=num_tc))

    def unknown(self, adev):
        return self.send_event_to_aux(adev, iidc_event(IIDC_EVENT_PTP))

    def bench_one(self, adev) -> None:
        self.send_event_to_aux(adev, iidc_event(IIDC_EVENT_BEFORE_TC_CHANGE))
