"""Models for lockdep across processes: the ice MTU deadlock, buggy and fixed, and an
atomic-context handler that sleeps.

``IceParent`` handles ETHTOOL_OP (a child->parent event the kernel runs under
rtnl: the runtime takes rtnl for the handler). Buggy (``AXT_FIXED`` unset): it
sends BEFORE_MTU_CHANGE to the child right there, under rtnl — the order
rtnl -> device_lock. ``IceRdma``'s remove() takes rtnl under device_lock — the
order device_lock -> rtnl: an inversion, even if no deadlock happens this time.
Fixed (``AXT_FIXED=1``): the event goes out from a worker that does not hold
rtnl, as ice's fix does.
"""

from __future__ import annotations

import os

from auxipc import AuxDriver, ParentModel, handler
from proto.events import Event, LinkChange, SetMac
from proto.payloads import MtuChangeBefore
from tests.models import log


class IceParent(ParentModel):
    modname = "ice"

    def __init__(self, devices: int = 1):
        super().__init__()
        self.fixed = os.environ.get("AXT_FIXED") == "1"

    def probe(self) -> None:
        adev = self.device("eth", 0, release=lambda adev: None)
        adev.init()
        adev.add()

    def _mtu_event(self, adev) -> None:
        adev.call(Event.BEFORE_MTU_CHANGE, MtuChangeBefore(old_mtu=1500, new_mtu=9000))
        log("mtu-event-sent", dev=adev.name, fixed=self.fixed)

    @handler(Event.ETHTOOL_OP)
    def ethtool(self, adev, op) -> int:
        if self.fixed:
            self.rt.call_later(0, lambda: self._mtu_event(adev))
        else:
            self._mtu_event(adev)
        return 0

    @handler(Event.SET_MAC)
    def set_mac(self, adev, req):
        return {"addr": req.addr, "filter_id": 0}


class IceRdma(AuxDriver):
    name = "irdma_like"
    id_table = ["ice.eth"]

    def probe(self, adev):
        return 0

    def remove(self, adev) -> None:
        with adev.rt.lock("rtnl"):      # like a netdev unregister in remove()
            log("remove-under-rtnl", dev=adev.name)

    @handler(Event.BEFORE_MTU_CHANGE)
    def before_mtu(self, adev, mtu) -> int:
        log("BEFORE_MTU_CHANGE", dev=adev.name, new_mtu=mtu.new_mtu)
        return 0

    @handler(Event.LINK_CHANGE)
    def link(self, adev, link: LinkChange) -> None:
        """Declared atomic: a sync call here is the kernel's "sleeping in atomic" BUG."""
        try:
            adev.call(Event.SET_MAC, SetMac(addr=b"\x02\x00\x00\x00\x00\x07"))
            log("atomic-call-passed", dev=adev.name)
        except Exception as exc:           # the runtime refuses: report what it said
            log("atomic-call-refused", dev=adev.name, errno=getattr(exc, "errno", 0), message=str(exc))
