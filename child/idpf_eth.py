"""``idpf_eth``: the IDPF netdev driver bound to ``ixd.eth`` devices (Model A's child).

It keeps a small netdev state per device: link, queues running or quiesced,
FW events seen. RESET_WARN and PREPARE_DETACH quiesce the queues before the
handler returns (the parent resets only after that).
"""

from __future__ import annotations

import logging

from proto.events import Event, PostConfig
from auxipc.handlers import handler
from .runtime import AuxDriver, ChildDevice

log = logging.getLogger("auxipc.idpf_eth")


class IdpfEth(AuxDriver):
    name = "idpf_eth"
    id_table = ["ixd.eth"]

    def probe(self, adev: ChildDevice) -> int:
        adev.data.update(link=None, queues="running", fw_events=0, quiesced=0)
        log.info("probe %s: netdev registered", adev.name)
        if adev.supports(Event.POST_CONFIG):
            rt = adev.rt
            rt.call_later(0, lambda: adev.bound and adev.notify(Event.POST_CONFIG, PostConfig(
                vport_id=0, mtu=1500, num_txq=4, num_rxq=4)))
        return 0

    def remove(self, adev: ChildDevice) -> None:
        adev.data["queues"] = "stopped"
        log.info("remove %s: netdev unregistered", adev.name)

    @handler(Event.LINK_CHANGE)
    def link_change(self, adev: ChildDevice, link) -> None:
        adev.data["link"] = link
        log.info("%s: link %s %d Mb/s", adev.name, "up" if link.up else "down", link.speed_mbps)

    @handler(Event.FW_EVENT)
    def fw_event(self, adev: ChildDevice, ev) -> None:
        adev.data["fw_events"] += 1
        log.info("%s: FW event %s state %d", adev.name, ev.kind.name, ev.state)

    @handler(Event.RESET_WARN)
    def reset_warn(self, adev: ChildDevice, warn) -> int:
        adev.data["queues"] = "quiesced"
        adev.data["quiesced"] += 1
        log.info("%s: %s reset pending: queues quiesced", adev.name, warn.reset_type.name)
        return 0

    @handler(Event.PREPARE_DETACH)
    def prepare_detach(self, adev: ChildDevice, req) -> int:
        adev.data["queues"] = "quiesced"
        log.info("%s: detach (%s) pending", adev.name, req.reason.name)
        return 0
