"""``ice``: an ice-like PCI owner. The netdev is the PCI driver's own; RDMA is its aux device.

As in ice_idc.c: one aux device per PF for irdma, ``ice.roce.N`` (RoCEv2;
``ice.iwarp.N`` would be the iWARP flavour), and the IIDC calls as events:
QSET_ADD / QSET_DEL (ice_add_rdma_qset / ice_del_rdma_qset: one scheduler
leaf per queue set, -ENOSPC when the TC is full) and REQUEST_RESET
(ice_rdma_request_reset: FUNC -> PFR, DEV -> CORER, else -EINVAL; -EBUSY while
a reset runs, -EIO after a failed one). P->C: RESET_WARN before the PF
unplugs its aux device, resets and plugs it again; BEFORE/AFTER_TC_CHANGE when
DCB changes, which here comes from the FW LLDP agent (``lldp=<seconds>`` in
$AUXIPC_HW: the link partner's DCB is programmed that long after irdma binds);
CRIT_ERR when the FW stops answering (SIGUSR1).

The PF publishes its aux device under its own lock and unpublishes it there
before deleting it, as ice does with ``pf->adev`` under ``pf->adev_mutex``
(``mutex:ice.adev_mutex`` here): an event goes out only under the mutex and only
to a published device (``ice_send_event_to_aux``: adev_mutex, then device_lock);
``ice_unplug_aux_dev`` takes the mutex only to clear the pointer, then deletes
outside it, since delete waits for device_lock (held by a delivery that holds the
mutex) and irdma's remove() calls back into the PF.
"""

from __future__ import annotations

from proto.errno import AuxError
from proto.events import CritErr, Event

from .nic import NicParent
from .runtime import ParentDevice

OICR_FW_HANG = 0x4000_0000      # the error-cause bit irdma is told about


class Ice(NicParent):
    modname = "ice"
    KINDS = ("roce",)
    RESET_STYLE = "replug"
    SPEEDS = (10_000, 25_000, 100_000)
    FEATURES = ("dcb",)
    HW_DEFAULTS = dict(max_tc=8, leaves_per_tc=8, mbx_latency=0.001)

    # Only the IIDC calls: everything else is the PF's own netdev's business.
    remove_notify = None
    dcb_config = None
    netshaper_set = None
    queue_config = None
    enable_queues = None
    set_mac = None
    mac_filter = None
    vlan_filter = None
    ethtool_op = None
    virtchnl = None
    post_config_done = None

    ADEV_MUTEX = "mutex:ice.adev_mutex"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.published: dict[str, ParentDevice] = {}      # pf->adev, under ADEV_MUTEX

    def publish(self, adev: ParentDevice) -> None:
        """ice_plug_aux_dev: pf->adev set under adev_mutex, after init and before add."""
        with self.rt.lock(self.ADEV_MUTEX):
            self.published[adev.short] = adev

    def unpublish(self, adev: ParentDevice) -> None:
        """ice_unplug_aux_dev: pf->adev cleared under adev_mutex; the delete and uninit that
        follow (NicParent.unplug) run outside it."""
        with self.rt.lock(self.ADEV_MUTEX):
            if self.published.get(adev.short) is adev:
                del self.published[adev.short]
                self.note("unpublish", dev=adev.name)

    def _call(self, adev: ParentDevice, event, payload=None) -> None:
        """ice_send_event_to_aux: under adev_mutex, to a published device only."""
        with self.rt.lock(self.ADEV_MUTEX):
            if self.published.get(adev.short) is not adev:
                self.note("skip_unpublished", dev=adev.name, event=Event(event).name)
                return
            super()._call(adev, event, payload)

    def fw_health(self, hung: bool) -> None:
        if not hung:
            return
        with self.rt.lock(self.ADEV_MUTEX):
            for adev in self.published.values():
                if adev.bound and adev.supports(Event.CRIT_ERR):
                    try:
                        adev.notify(Event.CRIT_ERR, CritErr(reg=OICR_FW_HANG))
                    except AuxError as exc:
                        self.note("child_error", dev=adev.name, event="CRIT_ERR", error=exc.name)
