"""The function's reset, as ice_schedule_reset / ice_rdma_request_reset run it.

    IDLE --request--> PENDING --warn--> WARNING --quiesced--> RESETTING --reset_done--> REBUILDING --rebuilt--> IDLE
                         |                 |                      |                          |
                         +-----------------+--------fail----------+--------------------------+--> FAILED

A request is accepted only in IDLE and returns at once (the reset runs from a
worker). While one runs, another is -EBUSY; after a failed one every request is
-EIO (the hardware needs a PCI remove/probe: ``recover``). A child may ask for
FUNC (PFR) or DEV (CORER) only; GLOBAL and FLR come from the FW or the host
(-EINVAL from a child).
"""

from __future__ import annotations

from enum import Enum

from auxipc import IllegalTransition, Machine
from proto.errno import AuxError, Errno
from proto.events import ResetType


class ResetState(Enum):
    IDLE = "idle"
    PENDING = "pending"          # accepted; the worker has not started
    WARNING = "warning"          # RESET_WARN / detach sent; the children quiesce
    RESETTING = "resetting"      # the hardware is in reset: queues, qsets, shapers are gone
    REBUILDING = "rebuilding"    # FW back; re-adding devices / RESET_COMPLETE
    FAILED = "failed"            # the FW did not come back: -EIO until recovered


RESET_TABLE = {
    ResetState.IDLE: {"request": ResetState.PENDING},
    ResetState.PENDING: {"warn": ResetState.WARNING, "fail": ResetState.FAILED},
    ResetState.WARNING: {"quiesced": ResetState.RESETTING, "fail": ResetState.FAILED},
    ResetState.RESETTING: {"reset_done": ResetState.REBUILDING, "fail": ResetState.FAILED},
    ResetState.REBUILDING: {"rebuilt": ResetState.IDLE, "fail": ResetState.FAILED},
    ResetState.FAILED: {"recover": ResetState.IDLE},
}
RESET_ILLEGAL = {ResetState.PENDING: Errno.EBUSY, ResetState.WARNING: Errno.EBUSY,
                 ResetState.RESETTING: Errno.EBUSY, ResetState.REBUILDING: Errno.EBUSY,
                 ResetState.FAILED: Errno.EIO, ResetState.IDLE: Errno.EINVAL}

# What the hardware calls each (ice: PFR, CORER, GLOBR; PCIe function level reset).
HW_NAME = {ResetType.FUNC: "PFR", ResetType.DEV: "CORER", ResetType.GLOBAL: "GLOBR", ResetType.FLR: "FLR"}
CHILD_MAY_REQUEST = (ResetType.FUNC, ResetType.DEV)


class Reset:
    def __init__(self, who: str):
        self.m = Machine("reset of", who, RESET_TABLE, ResetState.IDLE, RESET_ILLEGAL)
        self.kind: ResetType | None = None
        self.count = 0              # completed resets
        self.error = ""             # why the last one failed

    @property
    def state(self) -> ResetState:
        return self.m.state

    @property
    def running(self) -> bool:
        return self.m.state not in (ResetState.IDLE, ResetState.FAILED)

    def request(self, kind: ResetType, from_child: bool = True) -> None:
        """Accept a reset request or raise: -EINVAL (type), -EIO (after a failure), -EBUSY."""
        if from_child and kind not in CHILD_MAY_REQUEST:
            raise AuxError(Errno.EINVAL, f"$.payload.reset_type: {kind.name} cannot be requested by a child "
                           "(FUNC or DEV)")
        try:
            self.m.fire("request")
        except IllegalTransition as exc:
            if exc.state is ResetState.FAILED:
                raise AuxError(Errno.EIO, f"the previous {self.kind.name} reset failed ({self.error}); "
                               "the function needs a PCI remove and probe") from None
            raise AuxError(Errno.EBUSY, f"a {self.kind.name} reset is already running "
                           f"(state {exc.state.name})") from None
        self.kind = kind

    def warn(self) -> None:
        self.m.fire("warn")

    def quiesced(self) -> None:
        self.m.fire("quiesced")

    def reset_done(self) -> None:
        self.m.fire("reset_done")

    def rebuilt(self) -> None:
        self.m.fire("rebuilt")
        self.count += 1

    def fail(self, why: str) -> None:
        self.m.fire("fail")
        self.error = why

    def recover(self) -> None:
        self.m.fire("recover")
        self.error = ""

    def describe(self) -> str:
        kind = f" {self.kind.name} ({HW_NAME[self.kind]})" if self.kind else ""
        return f"{self.state.name}{kind}"
