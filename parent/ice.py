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
"""

from __future__ import annotations

from proto.events import CritErr, Event

from .nic import NicParent

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

    def fw_health(self, hung: bool) -> None:
        if not hung:
            return
        for adev in self.bound():
            if adev.supports(Event.CRIT_ERR):
                adev.notify(Event.CRIT_ERR, CritErr(reg=OICR_FW_HANG))
