"""(1) mlx5-style: the parent exposes notifier chains, the driver hangs a notifier_block on them.

As mlx5_core does (events.c): ``mlx5_notifier_register`` puts the driver's
block on a blocking chain (driver events: the reset, the TC change),
``mlx5_eq_notifier_register`` on the atomic FW-event chain (port change).
Every callback is the generic ``notifier_call(nb, unsigned long event, void
*data)``: the event is a raw number, the data a packed struct only the two
sides agree on. The chain is the parent's own list: it holds a block until the
driver unregisters it, whatever happened to the driver. The driver reaches the
parent through exported functions (EXPORTED_CALL, by symbol).
"""

from __future__ import annotations

import struct

from auxipc import handler
from auxipc.testing.patterns.abi import NOTIFY_STOP_MASK, notifier_from_errno, notifier_to_errno
from proto.errno import AuxError, Errno

from .common import ScenarioParent

# enum mlx5_driver_event (blocking chain) and mlx5_event (FW, atomic chain): raw numbers
MLX5_DRIVER_EVENT_RESET_WARN = 0x100
MLX5_DRIVER_EVENT_RESET_DONE = 0x101
MLX5_DRIVER_EVENT_TC_BEFORE = 0x102
MLX5_DRIVER_EVENT_TC_AFTER = 0x103
MLX5_DRIVER_EVENT_PTP_CHANGE = 0x1ff      # newer than the driver: it does not know it
MLX5_EVENT_TYPE_PORT_CHANGE = 0x09

RESET = struct.Struct("<I")               # struct { u32 reset_type; }
PORT = struct.Struct("<BI")               # struct { u8 up; u32 speed_mbps; }
TC = struct.Struct("<B8B")                # struct { u8 num_tc; u8 up2tc[8]; }


class Mlx5Notifier(ScenarioParent):
    modname = "mlx5n"
    PATTERN = "notifier"

    def __init__(self, devices: int = 1):
        super().__init__(devices)
        self.blocking: list = []          # the blocking chain: notifier_blocks, by device
        self.atomic: list = []            # the FW-event chain

    def call_chain(self, event: int, data: bytes = b"") -> int:
        """blocking_notifier_call_chain: each block in turn, until one says STOP. A block
        whose call failed on the bus counts as notifier_from_errno() of that error."""
        ret = 0
        for adev in list(self.blocking):
            try:
                ret = self.call(adev, "NOTIFIER_CALL", {"event": event, "data": data}).ret
            except AuxError as exc:
                ret = notifier_from_errno(-exc.errno)
            if ret & NOTIFY_STOP_MASK:
                break
        return ret

    # ---- the exported functions the driver calls ----

    @handler("EXPORTED_CALL")
    def exported(self, adev, call):
        chains = {"mlx5_notifier_register": self.blocking, "mlx5_eq_notifier_register": self.atomic}
        if call.symbol in chains:
            chains[call.symbol].append(adev)
        elif call.symbol in ("mlx5_notifier_unregister", "mlx5_eq_notifier_unregister"):
            chain = self.blocking if call.symbol == "mlx5_notifier_unregister" else self.atomic
            if adev in chain:
                chain.remove(adev)
        elif call.symbol == "mlx5_fw_reset_request":
            return {"ret": self.accept_reset(adev)}
        elif call.symbol == "mlx5_dcbnl_ieee_setets":
            return {"ret": self.dcb_request(adev, call.data[0])}
        else:
            raise AuxError(Errno.ENOENT, f"unresolved symbol {call.symbol}")
        return {"ret": 0}

    # ---- the scenario, as mlx5 sends it ----

    def warn(self, adev):
        return notifier_to_errno(self.call_chain(MLX5_DRIVER_EVENT_RESET_WARN, RESET.pack(1)))

    def done(self, adev):
        ret = self.call_chain(MLX5_DRIVER_EVENT_RESET_DONE, RESET.pack(1))
        return "ignored" if not ret & NOTIFY_STOP_MASK else f"NOTIFY {ret:#x}, ignored"

    def link(self, adev, up: bool, speed: int):
        for nb in list(self.atomic):      # atomic_notifier_call_chain: nothing comes back
            self.publish(nb, "ATOMIC_NOTIFIER_CALL", {"event": MLX5_EVENT_TYPE_PORT_CHANGE,
                                                      "data": PORT.pack(up, speed)})
        return None

    def tc_change(self, adev, num_tc: int):
        up2tc = [min(p, num_tc - 1) for p in range(8)]
        self.call_chain(MLX5_DRIVER_EVENT_TC_BEFORE)
        return notifier_to_errno(self.call_chain(MLX5_DRIVER_EVENT_TC_AFTER, TC.pack(num_tc, *up2tc)))

    def unknown(self, adev):
        return notifier_to_errno(self.call_chain(MLX5_DRIVER_EVENT_PTP_CHANGE))

    def bench_one(self, adev) -> None:
        self.call_chain(MLX5_DRIVER_EVENT_TC_BEFORE)
