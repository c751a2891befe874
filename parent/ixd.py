"""Model A's parent: ``ixd``, the foundational NIC that owns the PCI function and
adds ``ixd.eth.0`` for the IDPF netdev driver.

Reset behaviour follows ice_rdma_request_reset: FUNC and DEV are accepted and
the call returns at once (the reset runs afterwards, from the service task);
another request while one runs is -EBUSY, any request after a failed reset
-EIO, other types -EINVAL. The reset itself is the common unplug + replug:
RESET_WARN to the child (it quiesces before replying), delete, reset the
hardware, add the device again (the driver re-probes).
"""

from __future__ import annotations

import logging

from proto.errno import AuxError, Errno
from proto.events import Event, ResetType, ResetWarn, SetMacReply
from auxipc.handlers import handler
from .runtime import ParentDevice, ParentModel

log = logging.getLogger("auxipc.ixd")


class Ixd(ParentModel):
    modname = "ixd"

    def __init__(self, devices: int = 1):
        super().__init__()
        self.count = devices
        self.resetting = False
        self.reset_failed = False
        self.resets = 0
        self.macs: dict[bytes, int] = {}
        self.released: list[str] = []

    def probe(self) -> None:
        for i in range(self.count):
            self._plug(i)

    def _plug(self, i: int) -> ParentDevice:
        adev = self.device("eth", i, release=self.release)
        adev.init()
        try:
            adev.add()
        except AuxError:
            adev.uninit()
            raise
        return adev

    def release(self, adev: ParentDevice) -> None:
        self.released.append(adev.name)
        log.info("release(%s): last reference put", adev.name)

    @handler(Event.REQUEST_RESET)
    def request_reset(self, adev: ParentDevice, req) -> int:
        if req.reset_type not in (ResetType.FUNC, ResetType.DEV):
            raise AuxError(Errno.EINVAL, f"$.payload.reset_type: {req.reset_type.name} cannot be requested "
                           "by a child (FUNC or DEV)")
        if self.reset_failed:
            raise AuxError(Errno.EIO, "the previous reset failed")
        if self.resetting:
            raise AuxError(Errno.EBUSY, "a reset is already running")
        self.resetting = True
        self.rt.call_later(0, lambda: self._reset(adev, req.reset_type))
        return 0

    def _reset(self, adev: ParentDevice, kind: ResetType) -> None:
        try:
            if adev.bound and adev.supports(Event.RESET_WARN):
                adev.call(Event.RESET_WARN, ResetWarn(reset_type=kind), timeout=5.0)
            adev.delete()
            adev.uninit()
            self.resets += 1
            self._plug(adev.id)
        except AuxError as exc:
            self.reset_failed = True
            log.error("%s reset of %s failed: %s", kind.name, adev.name, exc)
        finally:
            self.resetting = False

    @handler(Event.SET_MAC)
    def set_mac(self, adev: ParentDevice, req) -> SetMacReply:
        if req.addr[0] & 1:
            raise AuxError(Errno.EINVAL, "$.payload.addr: a multicast address cannot be the primary MAC")
        if req.addr == bytes(6):
            raise AuxError(Errno.EINVAL, "$.payload.addr: the zero address is not valid")
        slot = self.macs.setdefault(req.addr, len(self.macs))
        return SetMacReply(addr=req.addr, filter_id=slot)

    @handler(Event.POST_CONFIG)
    def post_config(self, adev: ParentDevice, cfg) -> None:
        log.info("%s configured: vport %d mtu %d txq %d rxq %d", adev.name, cfg.vport_id, cfg.mtu,
                 cfg.num_txq, cfg.num_rxq)
        adev.data["post_config"] = cfg
