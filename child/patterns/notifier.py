"""(1) mlx5-style driver: a notifier_block on the parent's chains, exported functions back.

Probe registers the block on both chains (mlx5_notifier_register,
mlx5_eq_notifier_register), remove unregisters it. One callback per chain
decodes the raw event number; anything it does not know falls through to
NOTIFY_DONE, which the parent cannot tell from "handled".
"""

from __future__ import annotations

import struct

from auxipc import handler

from .common import ScenarioDriver

NOTIFY_DONE, NOTIFY_OK = 0x0000, 0x0001
MLX5_DRIVER_EVENT_RESET_WARN = 0x100
MLX5_DRIVER_EVENT_RESET_DONE = 0x101
MLX5_DRIVER_EVENT_TC_BEFORE = 0x102
MLX5_DRIVER_EVENT_TC_AFTER = 0x103
MLX5_EVENT_TYPE_PORT_CHANGE = 0x09
PORT = struct.Struct("<BI")
TC = struct.Struct("<B8B")


class Mlx5eNotifier(ScenarioDriver):
    name = "mlx5e_nb"
    id_table = ["mlx5n.eth"]
    PATTERN = "notifier"

    def export(self, adev, symbol: str, data: bytes = b"") -> int:
        return adev.call("EXPORTED_CALL", {"symbol": symbol, "data": data}).ret

    def setup(self, adev) -> None:
        self.export(adev, "mlx5_notifier_register")
        self.export(adev, "mlx5_eq_notifier_register")

    def remove(self, adev) -> None:
        self.export(adev, "mlx5_eq_notifier_unregister")
        self.export(adev, "mlx5_notifier_unregister")

    @handler("NOTIFIER_CALL")
    def notifier_call(self, adev, nb):
        if nb.event == MLX5_DRIVER_EVENT_RESET_WARN:
            self.quiesce(adev)
        elif nb.event == MLX5_DRIVER_EVENT_RESET_DONE:
            self.resume(adev)
        elif nb.event == MLX5_DRIVER_EVENT_TC_BEFORE:
            self.on_tc(adev, "before")
        elif nb.event == MLX5_DRIVER_EVENT_TC_AFTER:
            self.on_tc(adev, "after", TC.unpack(nb.data)[0])
        else:
            return {"ret": NOTIFY_DONE}
        return {"ret": NOTIFY_OK}

    @handler("ATOMIC_NOTIFIER_CALL")
    def fw_event(self, adev, nb) -> None:
        if nb.event == MLX5_EVENT_TYPE_PORT_CHANGE:
            self.on_link(adev, *PORT.unpack(nb.data))

    def request_reset(self, adev) -> int:
        return self.export(adev, "mlx5_fw_reset_request", struct.pack("<I", 1))

    def dcb_set(self, adev, num_tc: int) -> int:
        return self.export(adev, "mlx5_dcbnl_ieee_setets", bytes([num_tc]))
