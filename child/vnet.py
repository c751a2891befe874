"""``mlx5_vdpa``: the vDPA net driver on ``mlx5_core.vnet`` devices.

It asks nothing of its parent: it mirrors the link into its virtio config
space (LINK_CHANGE, atomic: record only), counts FW events, and stops its
virtqueues on detach (suspend) until attach (resume).
"""

from __future__ import annotations

from auxipc import AuxDriver, ChildDevice, handler, journal
from proto.events import Event


class Mlx5Vnet(AuxDriver):
    name = "mlx5_vdpa"
    id_table = ["mlx5_core.vnet"]

    def probe(self, adev: ChildDevice) -> int:
        adev.data.update(link_up=None, vqs="running", fw_events=0)
        journal("probe", dev=adev.name, driver=self.name)
        return 0

    def remove(self, adev: ChildDevice) -> None:
        journal("remove", dev=adev.name, driver=self.name)

    @handler(Event.LINK_CHANGE)
    def link_change(self, adev: ChildDevice, link) -> None:
        adev.data["link_up"] = link.up            # VIRTIO_NET_S_LINK_UP in the config space
        journal("link", dev=adev.name, driver=self.name, up=link.up, speed_mbps=link.speed_mbps)

    @handler(Event.FW_EVENT)
    def fw_event(self, adev: ChildDevice, ev) -> None:
        adev.data["fw_events"] += 1
        journal("fw_event", dev=adev.name, driver=self.name, kind=ev.kind, state=ev.state)

    def suspend(self, adev: ChildDevice) -> int:
        adev.data["vqs"] = "suspended"
        journal("detach", dev=adev.name, driver=self.name)
        return 0

    def resume(self, adev: ChildDevice) -> int:
        adev.data["vqs"] = "running"
        journal("attach", dev=adev.name, driver=self.name)
        return 0
